#!/usr/bin/env bash
# Builds, on this machine, what benchmarks/gpu_session.sh needs in the checkout before a GPU lease: .whl/ and
# .gpu_corpus/ (both git-ignored; the device tool copies them with carry=[".whl", ".gpu_corpus"]). Needs the package
# registries and the project's virtual environment (`make install`). From the repository root:
#
#     bash benchmarks/prepare_gpu_lease.sh
#
# The lease machine's image (the device library's KINDS.md) runs Python 3.12 with torch 2.11, Triton 3.6,
# transformers 5, huggingface-hub 1 and tokenizers 0.23, and lacks DeepSpeed and streaming. transformers 4.57, which
# the project pins, refuses hub 1 and tokenizers 0.23, so those travel too, at the versions of our own
# environment, with what DeepSpeed and streaming import that the image lacks. On the lease, gpu_session.sh installs
# them to /tmp/site, ahead of the image's own packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=${VENV_PY:-.venv/bin/python}
WHEELS=.whl
CORPUS=.gpu_corpus
CARRY_LIMIT_MB=64   # MiB one device call may carry, the working tree included

pinned() { sed -n "s/.*\"$1==\([^\"]*\)\".*/\1/p" setup.py; }                  # the version setup.py pins
installed() { "$VENV_PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }  # the version our venv holds

# Pure-Python packages (any platform) and compiled ones for the image's CPython 3.12 on x86_64 Linux: the three
# the project pins, the hub and tokenizers transformers 4.57 accepts, DeepSpeed's pydantic and hjson, and the
# compression and registry modules streaming imports at start. zstd goes unpinned: no wheel of our version is
# built for 3.12, and any 1.5 reads the same frames.
PURE=("transformers==$(pinned transformers)" "mosaicml-streaming==$(pinned mosaicml-streaming)"
      "huggingface-hub==$(installed huggingface_hub)" "hjson==$(installed hjson)"
      "pydantic==$(installed pydantic)" "annotated-types==$(installed annotated-types)"
      "typing-inspection==$(installed typing-inspection)" "catalogue==$(installed catalogue)"
      "python-snappy==$(installed python-snappy)")
COMPILED=("tokenizers==$(pinned tokenizers)" "pydantic-core==$(installed pydantic_core)"
          "brotli==$(installed brotli)" "cramjam==$(installed cramjam)" "zstd")
PLATFORMS=()
for n in 17 27 28 31 34; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done

rm -rf "$WHEELS" && mkdir -p "$WHEELS"
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "${PURE[@]}"
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --platform manylinux2014_x86_64 -d "$WHEELS" "${COMPILED[@]}"
# DeepSpeed publishes only a source archive: built here into a pure-Python wheel whose C++ and CUDA ops compile
# on first use (DS_BUILD_OPS=0), against the lease's own torch.
DS_BUILD_OPS=0 "$VENV_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" \
  "deepspeed==$(pinned deepspeed)"

# The full recipe's corpus: 448 px frames, so the lease needs no video encoder; ~320 clips keep the loader's
# restarts (one per epoch) out of the timed steps.
rm -rf "$CORPUS"
PATH="$(dirname "$VENV_PY"):$PATH" jala data synth --out "$CORPUS/raw" --lab 240 --wild 80 --frame-size 448
PATH="$(dirname "$VENV_PY"):$PATH" jala data convert --recipe pretrain_internvl3_2b --src "$CORPUS/raw" \
  --out "$CORPUS/mds" --workers 2
rm -rf "$CORPUS/raw"   # the lease reads the shards only

tree_bytes=$(git ls-files -z | xargs -0 cat | wc -c)  # the working tree travels too
carry_bytes=$(du -sb "$WHEELS" "$CORPUS" | awk '{total += $1} END {print total}')
size_mb=$(((tree_bytes + carry_bytes) / 1048576))
ls "$WHEELS"
echo "the working tree, $WHEELS and $CORPUS: $size_mb MiB of the $CARRY_LIMIT_MB MiB a device call carries"
if ((size_mb >= CARRY_LIMIT_MB)); then
  echo "too large to carry: fewer clips (--lab/--wild above) or fewer wheels" >&2
  exit 1
fi
