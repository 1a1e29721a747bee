#!/usr/bin/env bash
# Multi-node (or one-node) pretraining with the deepspeed launcher, run once from the first node:
#
#   launch/deepspeed.sh --hostfile launch/hostfile --recipe pretrain_internvl3_2b [key=value ...]
#   launch/deepspeed.sh --recipe tiny_cpu                          # one machine, GPUS_PER_NODE ranks
#
# The launcher reaches the other nodes over passwordless ssh, starts GPUS_PER_NODE ranks on each host of
# the hostfile and passes them the variables listed in ./.deepspeed_env (see launch/.deepspeed_env.example).
# Every node must see the repository, the virtual environment and data.mds_dir at the same paths.
set -euo pipefail
cd "$(dirname "$0")/.."

GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_PORT="${MASTER_PORT:-29500}"
HOSTFILE=()
if [[ "${1:-}" == "--hostfile" ]]; then
  HOSTFILE=(--hostfile "$2")
  shift 2
fi

exec deepspeed "${HOSTFILE[@]}" --num_gpus "$GPUS_PER_NODE" --master_port "$MASTER_PORT" \
  "$(command -v jala)" train "$@"
