#!/usr/bin/env bash
# Deep SLDA on ImageNet-1K, as in the paper: base initialisation on 100 classes, then 100 classes at a time,
# once with a plastic covariance and once with a fixed one. Both runs share one feature cache, so the
# second decodes no image. Settings come from the environment; nothing in this file needs editing.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat >&2 <<USAGE
usage: IMAGENET_DIR=/path/to/imagenet [BASE_INIT_CKPT=...] [LABELS_DIR=...] [SAVE_ROOT=...] \\
       [FEATURE_CACHE=...] [PYTHON=...] bash slda_imagenet.sh [extra experiment.py flags]

  IMAGENET_DIR    folder with train/ and val/, one sub-folder per synset (required)
  BASE_INIT_CKPT  ResNet-18 trained on the 100 base classes (default: image_files/imagenet_100_class_ckpt.pth)
  LABELS_DIR      folder with imagenet_train_labels.npy and imagenet_val_labels.npy
                  (default: image_files/ when they are there, else sorted class order)
  SAVE_ROOT       where results go (default: streaming_experiments)
  FEATURE_CACHE   feature cache shared by both runs (default: \$SAVE_ROOT/feature_cache)
  PYTHON          interpreter (default: .venv/bin/python if present, else python3)
USAGE
  exit 2
}

[ -n "${IMAGENET_DIR:-}" ] || { echo "error: IMAGENET_DIR is not set" >&2; usage; }
BASE_INIT_CKPT=${BASE_INIT_CKPT:-image_files/imagenet_100_class_ckpt.pth}
SAVE_ROOT=${SAVE_ROOT:-streaming_experiments}
FEATURE_CACHE=${FEATURE_CACHE:-$SAVE_ROOT/feature_cache}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
labels=()
[ -n "${LABELS_DIR:-}" ] && labels=(--labels_dir "$LABELS_DIR")

# The plastic run checks every file's size against the cache; the fixed run, which follows it at once, trusts
# folder modification times (--cache_check listing), a few seconds faster on ImageNet.
for covariance in plastic fixed; do
  if [ "$covariance" = plastic ]; then
    sigma=--streaming_update_sigma; check=sizes
  else
    sigma=--no-streaming_update_sigma; check=listing
  fi
  "$PYTHON" experiment.py --dataset imagenet --images_dir "$IMAGENET_DIR" --base_init_ckpt "$BASE_INIT_CKPT" \
    "${labels[@]}" --expt_name "slda_imagenet_$covariance" --save_dir "$SAVE_ROOT/slda_imagenet_$covariance" \
    --feature_cache "$FEATURE_CACHE" --cache_check $check --class_increment 100 --batch_size 256 \
    --shrinkage 1e-4 $sigma "$@"
done
