#!/usr/bin/env bash
# `make demo`: the whole JALA pipeline, tiny, on a laptop CPU (2 cores, no GPU), in about five minutes:
# a UniHand-Mix-shaped corpus -> MDS shards with a held-out split -> a GRVQ motion tokenizer and the corpus's
# motion tokens (2 torchrun ranks) -> 2-rank DeepSpeed ZeRO-3 pretraining through the `deepspeed` launcher -> a
# Hugging Face export -> hand-motion evaluation (MCP decoding, Table-1 metrics, pictures, the latent space) -> post-training a
# flow-matching policy on a LeRobot-format robot dataset -> the exported policy answering one observation.
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
OUT=demo_out
RECIPE=tiny_cpu
# Every step writes under demo_out/ and refuses to overwrite, so a second `make demo` starts from a clean folder.
if [[ -e "$OUT" ]]; then echo "removing the previous demo's $OUT/"; rm -rf "$OUT"; fi

jala data synth --out "$OUT/raw" --lab 48 --wild 24 --seed 0
jala data convert --src "$OUT/raw" --out "$OUT/mds" --recipe "$RECIPE" data.heldout_fraction=0.15
jala data inspect "$OUT/mds"
jala tokenizer train --recipe "$RECIPE" --out "$OUT/tokenizer" data.mds_dir="$OUT/mds"
# Two ranks share out the copy's pieces (here one per dataset), as the GPUs of a node would; rank 0 merges.
torchrun --standalone --nproc_per_node 2 "$(command -v jala)" data tokenize --tokenizer "$OUT/tokenizer" \
  --src "$OUT/mds" --out "$OUT/mds_tokens"

deepspeed --num_gpus 2 --master_port "${MASTER_PORT:-29533}" "$(command -v jala)" train --recipe "$RECIPE" \
  data.mds_dir="$OUT/mds_tokens" motion_tokenizer.kind=grvq motion_tokenizer.checkpoint="$OUT/tokenizer" \
  train.out_dir="$OUT/run"

jala export --run "$OUT/run" --out "$OUT/export"
jala eval motion --ckpt "$OUT/run" --data "$OUT/mds_tokens" --split lab --limit 4 --ensemble 2 --out "$OUT/eval/motion"
jala eval latents --ckpt "$OUT/run" --data "$OUT/mds_tokens" --limit 12 --out "$OUT/eval/latents"

jala data synth --format lerobot --out "$OUT/lerobot" --episodes 6 --cameras 2
jala data convert --format lerobot --recipe posttrain_tiny_cpu --src "$OUT/lerobot" --out "$OUT/robot_mds" --horizon 8
deepspeed --num_gpus 2 --master_port "${MASTER_PORT:-29533}" "$(command -v jala)" posttrain \
  --recipe posttrain_tiny_cpu --init "$OUT/export" robot.mds_dir="$OUT/robot_mds" train.out_dir="$OUT/posttrain"
jala export --run "$OUT/posttrain" --out "$OUT/policy"
python - "$OUT/policy" <<'PY'
import sys

import numpy as np

from jala_ds.eval.policy import JalaPolicy

policy = JalaPolicy.from_checkpoint(sys.argv[1])
schema = policy.schema
rng = np.random.default_rng(0)
obs = {"images": {cam: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for cam in schema.cameras},
       "state": np.zeros(schema.state_dim, np.float32), "instruction": "push the cube to the left"}
print("policy answered an action chunk of shape", policy.predict(obs).shape)
PY

echo
echo "Finished: pretraining checkpoints in $OUT/run, Hugging Face export in $OUT/export, evaluation in $OUT/eval,"
echo "post-trained policy in $OUT/policy (serve it: jala serve --ckpt $OUT/policy)."
echo "MLflow run logged to ${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} (experiment jala-tiny). To see it:"
echo "  .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
