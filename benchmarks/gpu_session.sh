#!/usr/bin/env bash
# One short lease of a GPU machine: the kernel tests in bf16, the kernel benchmarks, and the full recipe's
# training throughput with the variants that move it. Every phase is time-boxed so the whole script ends inside
# one call; logs and results are packed into $OUT/gpu_session.tgz after every phase, so a cut-off run still
# returns what it finished.
#
#     OUT=/tmp/out BUDGET_S=560 bash benchmarks/gpu_session.sh
#
# Inputs the caller puts in the checkout (both git-ignored):
#   .whl/          wheels for what the machine's image lacks or has at other versions (transformers 4.57,
#                  deepspeed, mosaicml-streaming and their small dependencies), installed to /tmp/site;
#   .gpu_corpus/   a synthetic corpus converted for the full recipe (`jala data synth --lab 240 --wild 80
#                  --frame-size 448` then `jala data convert --recipe pretrain_internvl3_2b`), so the machine
#                  needs no video encoder; ~320 clips keep loader restarts (one per epoch) out of the step time.
set -u
OUT=${OUT:-/tmp/gpu_session_out}
BUDGET_S=${BUDGET_S:-560}
WORK=/tmp/gpu_session
RESULTS=$WORK/results
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  ln -sfn "$PWD/kernels" /tmp/site/jala_kernels  # setup.py maps kernels/ to jala_kernels; no install here
  export PYTHONPATH=/tmp/site:$PWD
fi

pack() { tar czf "$OUT/gpu_session.tgz" -C "$WORK" . ; }

# phase NAME LIMIT_S COMMAND...: run with the smaller of its limit and what the budget has left (20 s kept
# for packing); skip it when under 30 s would be left.
phase() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - SECONDS - 20))
  if ((left < 30)); then echo "SKIP $name (budget spent)" | tee -a "$WORK/summary.txt"; return; fi
  ((limit > left)) && limit=$left
  local started=$SECONDS
  timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - started)) s (limit $limit s)" | tee -a "$WORK/summary.txt"
  tail -n 12 "$WORK/$name.log"
  pack
}

# DeepSpeed's own AdamW on CUDA is FusedAdam, compiled at first use (a minute of nvcc on a fresh machine);
# torch's AdamW keeps the lease for measuring. Everything else is the recipe's ds_config.
python3 - <<'EOF'
import json
cfg = json.load(open("ds_configs/zero3_bf16.json"))
cfg["optimizer"]["params"]["torch_adam"] = True
json.dump(cfg, open("/tmp/ds_zero3_bf16_torch_adam.json", "w"), indent=2)
EOF

# The full recipe with random weights on the carried corpus; VARIANT names the results folder.
throughput_args() {  # VARIANT STEPS [OVERRIDES...]
  local variant=$1 steps=$2; shift 2
  mkdir -p "$RESULTS/$variant"
  echo python3 -m jala_ds.cli bench throughput --recipe pretrain_internvl3_2b --steps "$steps" --warmup 2 \
    --out "$RESULTS/$variant" data.mds_dir=.gpu_corpus/mds model.pretrained=null model.visual_encoder_path=null \
    motion_tokenizer.kind=binning train.micro_batch_size=16 train.global_batch_size=16 train.grad_accum_steps=1 \
    train.ds_config=/tmp/ds_zero3_bf16_torch_adam.json tracking.enabled=false data.num_workers=6 "$@"
}

phase env 20 python3 -c "import sys, torch, triton, transformers, deepspeed, streaming
print(sys.version, 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__,
      'deepspeed', deepspeed.__version__, 'streaming', streaming.__version__, torch.cuda.get_device_name())"
phase throughput_base 170 $(throughput_args base 8 --profile "$RESULTS/base/profile")
phase kernel_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_chunk_attention.py tests/test_grvq_kernels.py \
  -k "bfloat16 or grvq or deterministic"
phase throughput_no_ckpt 75 $(throughput_args no_ckpt 5 model.gradient_checkpointing=false)
phase attention_bench 90 python3 -m benchmarks.attention --out "$RESULTS" --seq-lens 8192
phase grvq_bench 60 python3 -m benchmarks.grvq --out "$RESULTS" --n 1048576 --k 512 --kernels-only
phase throughput_flex 75 $(throughput_args flex 5 model.attention=flex)
cat "$WORK/summary.txt"
pack
