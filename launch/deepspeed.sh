#!/usr/bin/env bash
# Multi-node (or one-node) pretraining with the deepspeed launcher, run once from the first node:
#
#   launch/deepspeed.sh --hostfile launch/hostfile --recipe pretrain_internvl3_2b [key=value ...]
#   launch/deepspeed.sh --recipe tiny_cpu                          # one machine, GPUS_PER_NODE ranks
#
# The launcher reaches the other nodes over passwordless ssh and starts one rank per slot of each host in the
# hostfile (its slots=N; without a hostfile, GPUS_PER_NODE on this machine). The ranks meet at MASTER_ADDR, by
# default the hostfile's first host by name: deepspeed's own guess is that host's first address, which can be a
# container bridge the other nodes cannot reach. It passes them the NAME=VALUE lines of .deepspeed_env in the
# repository root or in $HOME (launch/.deepspeed_env.example); it reads every line as one, so anything else
# (a comment, a blank line) is refused here. Every node must see the repository, the virtual environment,
# data.mds_dir and train.out_dir at the same paths.
set -euo pipefail
cd "$(dirname "$0")/.."

GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_PORT="${MASTER_PORT:-29500}"

for env_file in "$HOME/${DS_ENV_FILE:-.deepspeed_env}" "./${DS_ENV_FILE:-.deepspeed_env}"; do
  [[ -f "$env_file" ]] || continue
  bad="$(grep -nvE '^[A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*$' "$env_file" | head -n 1 || true)"
  if [[ -n "$bad" ]]; then
    echo "launch/deepspeed.sh: $env_file line ${bad%%:*} is not NAME=VALUE (no comments, blank lines or spaces):" \
         "the deepspeed launcher would export it verbatim on every node; fix or remove that line" >&2
    exit 2
  fi
done

PLACEMENT=(--num_gpus "$GPUS_PER_NODE")
if [[ "${1:-}" == --hostfile=* ]]; then
  set -- --hostfile "${1#--hostfile=}" "${@:2}"
fi
if [[ "${1:-}" == "--hostfile" ]]; then
  if [[ ! -f "${2:-}" ]]; then
    echo "launch/deepspeed.sh: --hostfile '${2:-}' is not a file: pass a hostfile (see launch/hostfile.example)" >&2
    exit 2
  fi
  first_host="$(awk '$1 !~ /^#/ && NF { print $1; exit }' "$2")"
  [[ -n "$first_host" ]] || { echo "launch/deepspeed.sh: hostfile $2 names no host" >&2; exit 2; }
  PLACEMENT=(--hostfile "$2" --master_addr "${MASTER_ADDR:-$first_host}")
  shift 2
fi

exec deepspeed "${PLACEMENT[@]}" --master_port "$MASTER_PORT" "$(command -v jala)" train "$@"
