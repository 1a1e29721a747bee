#!/usr/bin/env bash
# Pretraining under torchrun. On one machine:
#
#   launch/torchrun.sh --recipe tiny_cpu [key=value ...]
#
# On several machines, run it on every node with the same MASTER_ADDR (a reachable host, e.g. node 0):
#
#   NNODES=4 MASTER_ADDR=node-001 launch/torchrun.sh --recipe pretrain_internvl3_2b
#
# torchrun's c10d rendezvous assigns node ranks itself, so the same command works on every node.
set -euo pipefail
cd "$(dirname "$0")/.."

NNODES="${NNODES:-1}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  # One rank per "GPU n:" line that nvidia-smi lists; none (no nvidia-smi, no driver, no device) starts 2 CPU
  # ranks. Counting every line of its output gave "1\n2" when it printed an error, and counted MIG lines as GPUs.
  gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  NPROC_PER_NODE=$(( gpus > 0 ? gpus : 2 ))
fi
if [[ "$NNODES" != 1 && -z "${MASTER_ADDR:-}" ]]; then
  # 127.0.0.1 would have every node wait for a rendezvous with itself until it timed out
  echo "launch/torchrun.sh: NNODES=$NNODES needs MASTER_ADDR, a host every node reaches (e.g. node 0)" >&2
  exit 2
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${RDZV_ID:-jala}" \
  "$(command -v jala)" train "$@"
