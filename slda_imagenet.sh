#!/usr/bin/env bash
# Deep SLDA on ImageNet-1K, as in the paper: base initialisation on 100 classes, then 100 classes at a time,
# once with a plastic covariance and once with a fixed one. Both runs share one feature cache, so the
# second decodes no image. Settings come from the environment; nothing in this file needs editing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat >&2 <<USAGE
usage: IMAGENET_DIR=/path/to/imagenet [BASE_INIT_CKPT=...] [LABELS_DIR=...] [SAVE_ROOT=...] \\
       [FEATURE_CACHE=...] [PYTHON=...] bash slda_imagenet.sh [extra experiment.py flags]

  IMAGENET_DIR    folder with train/ and val/, one sub-folder per synset (required)
  BASE_INIT_CKPT  ResNet-18 trained on the 100 base classes (default: imagenet_100_class_ckpt.pth in
                  ./imagenet_files/ or in this project's image_files/ or imagenet_files/)
  LABELS_DIR      folder with imagenet_train_labels.npy and imagenet_val_labels.npy (default: the first of
                  those folders that holds them; without them the class order is sorted, not the paper's)
  SAVE_ROOT       where results go (default: streaming_experiments)
  FEATURE_CACHE   feature cache shared by both runs (default: \$SAVE_ROOT/feature_cache)
  PYTHON          interpreter (default: this project's .venv/bin/python if present, else python3)
USAGE
  exit 2
}

[ -n "${IMAGENET_DIR:-}" ] || { echo "error: IMAGENET_DIR is not set" >&2; usage; }
SAVE_ROOT=${SAVE_ROOT:-streaming_experiments}
FEATURE_CACHE=${FEATURE_CACHE:-$SAVE_ROOT/feature_cache}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON=$here/.venv/bin/python; else PYTHON=python3; fi
fi
inputs=()
[ -n "${LABELS_DIR:-}" ] && inputs+=(--labels_dir "$LABELS_DIR")
[ -n "${BASE_INIT_CKPT:-}" ] && inputs+=(--base_init_ckpt "$BASE_INIT_CKPT")

# The plastic run checks every file's size against the cache; the fixed run, which follows it at once, trusts
# folder modification times (--cache_check listing), which saves a stat per image file.
for covariance in plastic fixed; do
  if [ "$covariance" = plastic ]; then
    sigma=--streaming_update_sigma; check=sizes
  else
    sigma=--no-streaming_update_sigma; check=listing
  fi
  "$PYTHON" "$here/experiment.py" --dataset imagenet --images_dir "$IMAGENET_DIR" \
    "${inputs[@]}" --expt_name "slda_imagenet_$covariance" --save_dir "$SAVE_ROOT/slda_imagenet_$covariance" \
    --feature_cache "$FEATURE_CACHE" --cache_check $check --class_increment 100 --batch_size 256 \
    --shrinkage 1e-4 $sigma "$@"
done
