#!/usr/bin/env bash
# The GPU check (tests/benchmarks/gpu_check.py: throughput and MFU against HF Trainer, fused K = 1, 2, 4, 8, TPOT
# noise, the bf16 divergence path, peak memory against the plan's estimate), one call, no downloads at run time.
# It writes gpu-check.json and gpu-check.md to $OUT (or --out DIR).
#
#   bash scripts/gpu-check.sh --dry           here, on CPU, on a tiny model: the suite runs this so it cannot rot
#   bash scripts/gpu-check.sh --fetch-wheels  here, before a GPU run: the wheels a GPU image with PyTorch,
#                                             transformers and peft but without this project's other needs lacks,
#                                             at the lock's versions, into .whl/ (carry it to the GPU machine)
#   bash scripts/gpu-check.sh                 on the GPU machine (~0.5B and ~1.5B models in bf16, under 8 minutes
#                                             on one H200)
set -euo pipefail
cd "$(dirname "$0")/.."

# What the device image lacks (it has torch, transformers, peft, accelerate, safetensors, tokenizers, scipy).
GPU_IMAGE_LACKS=(pydantic pydantic-core annotated-types typing-inspection)

locked() {  # the lock's version of a package
  grep -iE "^$1==" requirements/constraints.txt | head -1 | cut -d= -f3 | cut -d' ' -f1
}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  python_version="${GPU_PYTHON:-3.12}"
  mkdir -p .whl
  for name in "${GPU_IMAGE_LACKS[@]}"; do
    version="$(locked "$name")"
    [[ -n "$version" ]] || { echo "gpu-check: $name is not in requirements/constraints.txt" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$name==$version"
  done
  ls .whl
  exit 0
fi

if [[ " $* " == *" --dry "* ]]; then
  # shellcheck source=scripts/env.sh
  source scripts/env.sh  # the project's own .venv, set up on first use
  exec python tests/benchmarks/gpu_check.py "$@"
fi

# On a GPU machine: its own Python (with CUDA's PyTorch), this project and the carried wheels in a private folder.
site="${TMPDIR:-/tmp}/gpu-check-site"
if [[ ! -d "$site" ]]; then
  wheels=()
  if [[ -d .whl ]]; then wheels=(.whl/*.whl); fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" . "${wheels[@]}"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 tests/benchmarks/gpu_check.py "$@"
