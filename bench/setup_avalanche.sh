#!/usr/bin/env bash
# Installs Avalanche's StreamingLDA for bench/bench_slda.py into a folder of its own (default bench/.avalanche,
# ignored by git), never into the project's environment: avalanche-lib is no dependency of the project.
#
# Usage: bash bench/setup_avalanche.sh [FOLDER]   (PYTHON=... picks the pip; default .venv/bin/python)
#
# Everything is installed with --no-deps, so pip downloads no second torch, numpy or scikit-learn: the bench
# appends FOLDER to sys.path after the project's site-packages, and Avalanche runs on the project's torch.
# The list is what `from avalanche.training.supervised.deep_slda import StreamingLDA` imports and the project's
# environment lacks (avalanche/__init__ imports its benchmarks, models, loggers and metrics, whatever one uses):
#   avalanche's own imports: dill, gdown, pytorchcv, gputil, torchmetrics, qpsolvers, wandb, tensorboard (through
#     torch.utils.tensorboard);
#   theirs: requests, urllib3, certifi, beautifulsoup4 (gdown); lightning-utilities (torchmetrics); platformdirs,
#     docker-pycreds, six, sentry-sdk, psutil, protobuf (wandb); absl-py (tensorboard).
# wandb, tensorboard and protobuf are pinned to releases of avalanche-lib 0.6.0's time (October 2024): later
# wandb imports opentelemetry and pydantic as well, and later tensorboard needs protobuf 6, which wandb 0.18 does
# not load.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TARGET=${1:-bench/.avalanche}
"$PYTHON" -m pip install --no-deps --upgrade --target "$TARGET" \
  avalanche-lib==0.6.0 \
  dill==0.4.1 gdown==6.5.1 pytorchcv==0.0.74 gputil==1.4.0 torchmetrics==1.9.0 qpsolvers==4.13.0 \
  wandb==0.18.5 tensorboard==2.18.0 \
  requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 beautifulsoup4==4.15.0 lightning-utilities==0.15.3 \
  platformdirs==4.14.8 docker-pycreds==0.4.0 six==1.17.0 sentry-sdk==2.75.0 psutil==7.2.2 protobuf==5.28.3 \
  absl-py==2.5.1
# avalanche-lib's wheel also installs top-level packages named tests and examples, and the scripts go to bin:
# none is needed, and a package named tests could shadow the project's own.
rm -rf "$TARGET/tests" "$TARGET/examples" "$TARGET/bin"
"$PYTHON" -W ignore -c "import sys; sys.path.append('$TARGET')
from avalanche.training.supervised.deep_slda import StreamingLDA
import avalanche; print('avalanche-lib', avalanche.__version__, 'importable from $TARGET')"
