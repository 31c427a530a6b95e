#!/usr/bin/env bash
# GPU check for an NVIDIA H100 machine, at most about 8 minutes: the tests with their CUDA variants, the SLDA
# benchmark (including an ImageNet-sized 1.28M-sample stream), a cached rerun at a tenth of ImageNet's
# training images, the pipeline benchmark from JPEG on CUDA and the backbones' throughput (ResNet-18, timm ViT-S/16
# and ViT-B/16), with the machine's description. A step that
# fails or runs out of time is reported and the next one still runs. The tests need pytest and matplotlib.
# Usage: bash bench/gpu_check.sh   (uses .venv after bash setup.sh, else python3: on a GPU machine without
# internet access whose python3 already has torch, torchvision, scikit-learn, pillow and tqdm, no setup is
# needed; PYTHON=... picks another interpreter). The tests run in one process (-o addopts= drops pytest.ini's
# pytest-xdist options, which such a python3 may lack).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1

step() {   # step TITLE SECONDS COMMAND...
  local title=$1 seconds=$2
  shift 2
  echo "== $title =="
  timeout "$seconds" "$@"
  local code=$?
  if [ "$code" = 124 ]; then echo "== $title: out of time after $seconds s =="
  elif [ "$code" != 0 ]; then echo "== $title: failed with exit code $code =="; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "CPU cores: $(nproc)"
"$PYTHON" -c 'import torch, torchvision; print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'
step "Tests without the subprocess ones, on this machine (the CUDA variants of the SLDA oracles run here)" 150 \
  "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= -m "not slow" tests
step "SLDA on CUDA: every size against the original's rule and the GEMM-only and addr-only limits" 150 \
  "$PYTHON" bench/bench_slda.py --device cuda
step "SLDA on CUDA: an ImageNet-sized batch" 60 \
  "$PYTHON" bench/bench_slda.py --device cuda --dims 512 --classes 1000 --batched_samples 1281167 --predict_classes
step "SLDA on the CPU of the same machine, for comparison" 30 \
  "$PYTHON" bench/bench_slda.py --device cpu --dims 512 --classes 1000 --repeats 1
step "Rerun from the feature cache on CUDA: 1000 classes x (128 + 50) files" 80 \
  "$PYTHON" bench/bench_cached_rerun.py --device cuda --train_per_class 128 --cache_check listing --repeats 1
step "Pipeline from JPEG on CUDA" 100 \
  "$PYTHON" bench/bench_pipeline.py --device cuda --classes 10 --train_per_class 150 --val_per_class 20 \
  --increment 2 --batch_size 256 --workers "$(nproc)" --decode_on_device
step "Backbones on CUDA: ResNet-18, ViT-S/16, ViT-B/16 (timm), bfloat16 autocast" 45 \
  "$PYTHON" bench/bench_backbones.py --device cuda --batch_size 128 --seconds 4
