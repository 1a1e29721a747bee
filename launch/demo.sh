#!/usr/bin/env bash
# `make demo`: the whole JALA pretraining job, tiny, on a laptop CPU (2 cores, no GPU), in a few minutes:
# synthesize a UniHand-Mix-shaped corpus -> MDS shards -> 2-rank DeepSpeed ZeRO-3 pretraining through the
# `deepspeed` launcher -> a Hugging Face export -> where to look in MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
OUT=demo_out
RECIPE=tiny_cpu

jala data synth --out "$OUT/raw" --lab 48 --wild 24 --seed 0
jala data convert --src "$OUT/raw" --out "$OUT/mds" --recipe "$RECIPE"
jala data inspect "$OUT/mds"

deepspeed --num_gpus 2 --master_port "${MASTER_PORT:-29533}" "$(command -v jala)" train --recipe "$RECIPE" \
  data.mds_dir="$OUT/mds" train.out_dir="$OUT/run"

jala export --run "$OUT/run" --out "$OUT/export"

echo
echo "Pretraining finished: checkpoints in $OUT/run, Hugging Face export in $OUT/export."
echo "MLflow run logged to ${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} (experiment jala-tiny). To see it:"
echo "  .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
