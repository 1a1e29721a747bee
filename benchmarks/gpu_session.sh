#!/usr/bin/env bash
# One short lease of a GPU machine: the full recipe's training throughput with the variants that move it, the
# kernel tests in bf16 and the kernel benchmarks. Every phase is time-boxed so the whole script ends inside one
# call; logs and results are packed into $OUT/gpu_session.tgz after every phase, so a cut-off run still returns
# what it finished. PHASES picks and orders the phases. The default runs all of them, what a lease most needs
# first: one call of a 15-minute lease (BUDGET_S ~520, compilation cold) reaches about the fifth.
#
#     OUT=/tmp/out BUDGET_S=560 PHASES="base zero3 eager_layers grvq" bash benchmarks/gpu_session.sh
#
# Inputs the caller puts in the checkout (git-ignored); `bash benchmarks/prepare_gpu_lease.sh` builds the first two:
#   .whl/          wheels for what the machine's image lacks or has at other versions (transformers 4.57,
#                  deepspeed, mosaicml-streaming and their small dependencies), installed to /tmp/site;
#   .gpu_corpus/   a synthetic corpus converted for the full recipe (448 px frames), so the machine needs no video
#                  encoder; ~320 clips keep loader restarts (one per epoch) out of the step time;
#   .gpu_prev/     for the `previous` phase only: an earlier commit (`git archive REV | tar -x -C .gpu_prev`).
set -u
OUT=${OUT:-/tmp/gpu_session_out}
BUDGET_S=${BUDGET_S:-560}
WORK=/tmp/gpu_session
ROOT=$PWD
RESULTS=$WORK/results
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false TORCH_LOGS=recompiles  # a recompile shows in the log

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  ln -sfn "$PWD/kernels" /tmp/site/jala_kernels  # setup.py maps kernels/ to jala_kernels; no install here
  export PYTHONPATH=/tmp/site:$PWD
fi

pack() { tar czf "$OUT/gpu_session.tgz" --exclude='*.json.gz' -C "$WORK" . ; }  # traces stay behind: too big to return

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

# ZeRO-3 with DeepSpeed's memory-efficient linear back on (the `mel_on` variant).
python3 - <<'EOF'
import json
cfg = json.load(open("ds_configs/zero3_bf16.json"))
cfg["zero_optimization"]["memory_efficient_linear"] = True
json.dump(cfg, open("/tmp/ds_zero3_mel_on.json", "w"), indent=2)
EOF

# ZeRO-2 with DeepSpeed's throughput timer on, as it is by default (`jala_ds/train/ds_config.py` turns it off): it
# synchronises the device at every forward and step. For the `stock_host` variant.
python3 - <<'EOF'
import json
cfg = json.load(open("ds_configs/zero2.json"))
cfg["timers"] = {"throughput": {"enabled": True}}
json.dump(cfg, open("/tmp/ds_zero2_timer.json", "w"), indent=2)
EOF

# A DINOv2-base-shaped frame encoder with random weights (transformers' Dinov2Config defaults are the base shape;
# 518 px as published, interpolated to the recipe's 224): the recipe's real cost without a download.
python3 -c "import transformers as t; t.Dinov2Model(t.Dinov2Config(image_size=518)).save_pretrained('/tmp/dinov2-base')" \
  >"$WORK/encoder.log" 2>&1 || { echo "frame encoder build failed"; cat "$WORK/encoder.log"; }

# The full recipe with random weights on the carried corpus; VARIANT names the results folder. WARMUP (default 4)
# untimed steps come first: the recipe compiles its layers, and the compilations must fall inside them (the
# result warns when a graph was compiled while timing).
RECIPE_ON_LEASE="data.mds_dir=$ROOT/.gpu_corpus/mds model.pretrained=null model.visual_encoder_path=/tmp/dinov2-base \
  motion_tokenizer.kind=binning train.micro_batch_size=16 train.global_batch_size=16 train.grad_accum_steps=1 \
  tracking.enabled=false data.num_workers=6"
throughput_args() {  # VARIANT STEPS [OVERRIDES...]
  local variant=$1 steps=$2; shift 2
  mkdir -p "$RESULTS/$variant"
  echo python3 -m jala_ds.cli bench throughput --recipe pretrain_internvl3_2b --steps "$steps" --warmup "${WARMUP:-4}" \
    --out "$RESULTS/$variant" $RECIPE_ON_LEASE "$@"
}
ZERO3="train.ds_config=ds_configs/zero3_bf16.json"

# The order: the shipped step, free-running and profiled (base); the same per-GPU work as the paper's 8 GPUs at a
# batch of 128 (ga8: 8 micro-batches and one whole-model optimiser step = 8 x (16 samples and an eighth of it));
# the host-side changes undone (stock_host: before/after); those changes' tests on CUDA; then the rest.
PHASES=${PHASES:-"env base ga8 stock_host zero2_tests attention host_variants sync_tests cpp_wrapper kernel_tests repeat stock_buckets grad_buckets grad_checks zero3 eager_layers lm_head unfused fused_ops flex"}
for name in $PHASES; do
  case $name in
    env) phase env 20 python3 -c "import sys, torch, triton, transformers, deepspeed, streaming
print(sys.version, 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__,
      'deepspeed', deepspeed.__version__, 'streaming', streaming.__version__, torch.cuda.get_device_name())" ;;
    # the recipe as shipped (ZeRO-2, compiled layers), profiled; then one change at a time
    base) phase throughput_base 220 $(throughput_args base 6 --profile "$RESULTS/base/profile") ;;
    # the shipped recipe once more, last or second: how far two runs of one setting drift within a lease
    repeat) phase throughput_repeat 160 $(throughput_args repeat 5) ;;
    # the shipped recipe with every host-side change of 2026-11-27's fifth to eighth sessions undone (DeepSpeed's
    # gradient checks, per-parameter reduction, host-decided step and throughput timer): what every lease until
    # then measured, against base
    stock_host) phase throughput_stock_host 160 $(throughput_args stock_host 5 train.ds_config=/tmp/ds_zero2_timer.json \
      train.multi_tensor_grad_checks=false train.bucketed_grad_reduction=false train.sync_free_step=false) ;;
    # one engine, each host-side change undone in place for its own steps, the variants interleaved: the timer,
    # the host-decided step, DeepSpeed's checks, its re-pointing, all of them (benchmarks/host_variants.py)
    host_variants) phase host_variants 240 python3 -m benchmarks.host_variants --recipe pretrain_internvl3_2b \
      --out "$RESULTS" $RECIPE_ON_LEASE train.out_dir=/tmp/host_variants_run ;;
    # the shipped recipe with DeepSpeed's own per-gradient overflow check and norm before each optimiser step
    # (what every lease until 2026-11-27's measured), against base's multi-tensor checks; then the step alone
    stock_checks) phase throughput_stock_checks 160 \
      $(throughput_args stock_checks 5 train.multi_tensor_grad_checks=false) ;;
    grad_checks) phase grad_checks_bench 60 python3 -m benchmarks.zero_grad_checks --out "$RESULTS" ;;
    # the shipped recipe with DeepSpeed's per-parameter gradient reduction in the backward (every lease until
    # 2026-11-27's), against base's bucketed one; then the backward's reduction alone
    stock_buckets) phase throughput_stock_buckets 160 \
      $(throughput_args stock_buckets 5 train.bucketed_grad_reduction=false) ;;
    grad_buckets) phase grad_buckets_bench 60 python3 -m benchmarks.zero_grad_buckets --out "$RESULTS" ;;
    # the bucketed reduction and the sync-free step against DeepSpeed's on CUDA tensors (the reduction on its
    # stream, the skip in torch's fused AdamW), and the trainer's step waiting for nothing, first: every
    # throughput phase after it trains with both
    zero2_tests) phase zero2_tests 120 python3 -m pytest -v -p no:cacheprovider tests/test_train_zero_grad_buckets.py \
      tests/test_train_zero_sync_free_step.py tests/test_train_step_host_syncs.py -m "not slow" ;;
    # the recipe until 2026-11-27's second lease: ZeRO-3 (gathers per block), eager layers
    zero3) phase throughput_zero3 110 $(WARMUP=2 throughput_args zero3 5 $ZERO3 train.compile_blocks=null) ;;
    zero3_compiled) phase throughput_zero3_compiled 200 $(throughput_args zero3_compiled 5 $ZERO3) ;;
    eager_layers) phase throughput_eager_layers 110 $(WARMUP=2 throughput_args eager_layers 5 train.compile_blocks=null) ;;
    # ZeRO-3 choices, each against the zero3 row
    by_module) phase throughput_by_module 80 \
      $(WARMUP=2 throughput_args by_module 5 $ZERO3 train.compile_blocks=null train.zero3_gather_by_block=false) ;;
    mel_on) phase throughput_mel_on 80 \
      $(WARMUP=2 throughput_args mel_on 5 train.ds_config=/tmp/ds_zero3_mel_on.json train.compile_blocks=null) ;;
    # the paper's batch of 128 on one GPU: 8 micro-batches of 16 per optimiser step, as a one-GPU run takes it
    ga8) phase throughput_ga8 160 $(WARMUP=2 throughput_args ga8 3 train.global_batch_size=128 train.grad_accum_steps=8) ;;
    # torch's SDPA with its cuDNN backend allowed again in the vision tower, frame encoder and perceivers (the
    # recipe turns it off: the 2026-11-26 profile showed ~2 ms of host time per cuDNN attention call, 44 a step)
    # inductor's generated code for the compiled layers as C++ instead of Python (TORCHINDUCTOR_CPP_WRAPPER): each
    # layer call then launches its kernels without Python's per-launch cost; slower to compile
    cpp_wrapper) phase throughput_cpp_wrapper 240 env TORCHINDUCTOR_CPP_WRAPPER=1 $(throughput_args cpp_wrapper 5) ;;
    cudnn_sdp) phase throughput_cudnn_sdp 160 $(throughput_args cudnn_sdp 5 train.cudnn_attention=true) ;;
    # the language model's RMSNorms, SwiGLUs and rotary embeddings on eager PyTorch instead of the recipe's fused
    # Triton kernels, profiled: the GPU busy time and peak memory are what the kernels change on a host-bound card
    unfused) phase throughput_unfused 190 \
      $(throughput_args unfused 5 model.fused_ops=false --profile "$RESULTS/unfused/profile") ;;
    # the same variant run by an earlier commit's code, unpacked there by the caller into .gpu_prev/; its own
    # kernels too: /tmp/site's jala_kernels is this checkout's and would shadow them
    previous) mkdir -p /tmp/site_prev && ln -sfn "$ROOT/.gpu_prev/kernels" /tmp/site_prev/jala_kernels
      phase throughput_previous 160 env PYTHONPATH="/tmp/site_prev:${PYTHONPATH:-}" \
        bash -c "cd .gpu_prev && $(throughput_args previous 5)" ;;
    unpacked) phase throughput_unpacked 160 $(throughput_args unpacked 5 data.pack=false) ;;
    ckpt) phase throughput_ckpt 160 $(throughput_args ckpt 5 model.gradient_checkpointing=true) ;;
    flex) phase throughput_flex 160 $(throughput_args flex 5 model.attention=flex) ;;
    # the kernels' tests where the interpreter cannot go (bf16, compiled, real launches); every new shape autotunes
    # each kernel over all its tile configs (~30 s a test), so 8 processes share the compiling. The dispatcher test
    # runs Triton's interpreter, which in the image's Triton 3.6 fails with its numpy 2.5 (range over a run-time
    # bound), so it stays out.
    kernel_tests) phase kernel_tests 170 python3 -m pytest -v -p no:cacheprovider -n 8 tests/test_chunk_attention.py \
      tests/test_grvq_kernels.py tests/test_fused_lm_ops.py \
      -k "(bfloat16 or grvq or deterministic or compiled or devices) and not environment_at_call_time" ;;
    # a training forward and backward on the GPU under CUDA's sync check (no host sync allowed), and compiled
    # layers taking the batch's attention bounds
    sync_tests) phase sync_tests 150 python3 -m pytest -v -p no:cacheprovider tests/test_model_host_syncs.py \
      tests/test_train_compiled_blocks.py -k "host_sync or census or recipe_kernels" ;;
    # the GRVQ kernels' tests alone, compiled on CUDA tensors
    grvq_tests) phase grvq_tests 90 python3 -m pytest -v -p no:cacheprovider -n 4 tests/test_grvq_kernels.py \
      -k "not environment_at_call_time" ;;
    fused_ops) phase fused_ops_bench 60 python3 -m benchmarks.fused_lm_ops --out "$RESULTS" ;;
    # the LM head's products with one row per token against the model's rows padded to a multiple of 64
    lm_head) phase lm_head_bench 40 python3 -m benchmarks.lm_head --out "$RESULTS" ;;
    attention) phase attention_bench 150 python3 -m benchmarks.attention --out "$RESULTS" --seq-lens 8192 --heads 12/2/128 ;;
    grvq) phase grvq_bench 60 python3 -m benchmarks.grvq --out "$RESULTS" --n 1048576 --k 512 --kernels-only ;;
    *) echo "unknown phase $name" | tee -a "$WORK/summary.txt" ;;
  esac
done
cat "$WORK/summary.txt"
pack
