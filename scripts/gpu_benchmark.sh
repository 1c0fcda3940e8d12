#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run: ResNet-20 on CIFAR shapes and ResNet-50 on
# ImageNet shapes, float32 and bfloat16 compute, resjax next to PyTorch eager on the same card.
#
#   bash scripts/gpu_benchmark.sh OUT_DIR
#
# Writes OUT_DIR/card.txt (GPU and library versions), OUT_DIR/bench.log (everything printed)
# and one JSON file of scripts/benchmark.py records per run. Each run has its own time limit
# (LIMIT seconds, default 150), so one slow compile cannot take the others with it. The model
# names and batch sizes can be overridden (CIFAR_MODEL, CIFAR_BATCH, IMAGENET_MODEL,
# IMAGENET_BATCH) to try the script on a CPU with small ones.
set -u
out=${1:?usage: bash scripts/gpu_benchmark.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # Absolute: the runs below start from the repo root.
log=$out/bench.log
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# JAX takes 75% of the card by default; PyTorch times in the same process and needs the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
python=${PYTHON:-python3}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$python" -c 'import jax, flax, optax, sys
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
except ImportError:
    print("torch: not installed")'
} 2>&1 | tee "$out/card.txt"

bench() {  # bench NAME FLAGS...: one scripts/benchmark.py run, its records in OUT_DIR/NAME.json
  local name=$1
  shift
  echo "=== $name: $*" | tee -a "$log"
  timeout "${LIMIT:-150}" "$python" scripts/benchmark.py --json "$out/$name.json" --torch \
    --steps 20 "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

cifar=${CIFAR_MODEL:-resnet20}
imagenet=${IMAGENET_MODEL:-resnet50}
cifar_batch=${CIFAR_BATCH:-128,1024}
imagenet_batch=${IMAGENET_BATCH:-256}
# Most wanted first: a run cut short by the machine's time limit loses the last ones.
bench cifar_f32 --models "$cifar" --batch "$cifar_batch" --dtype float32 --hvp
bench imagenet_bf16 --models "$imagenet" --batch "$imagenet_batch" --dtype bfloat16
bench imagenet_f32 --models "$imagenet" --batch "$imagenet_batch" --dtype float32
bench cifar_bf16 --models "$cifar" --batch "$cifar_batch" --dtype bfloat16
