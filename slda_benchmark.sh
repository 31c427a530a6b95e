#!/usr/bin/env bash
# Deep SLDA on the class-incremental benchmarks of today's papers (RanPAC, SimpleCIL, FeCAM, ACIL, EASE):
# benchmarks x backbones x class orders (seeds) x covariances, every run from one feature cache (the network
# sees each image once per backbone). Class orders are drawn as PyCIL and LAMDA-PILOT draw them
# (--class_order_rng numpy; seed 1993 is their CIFAR-100 order). Finished runs are skipped and interrupted ones
# resumed, so the script can be run again after a stop; a folder holding a run of other settings (other extra
# flags: the folder names leave them out) stops it, so run other extra flags under another SAVE_ROOT. Ends with
# one table of mean and standard deviation over seeds (final and average incremental accuracy, forgetting),
# printed and saved as Markdown.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat >&2 <<USAGE
usage: BENCHMARKS="..." [CIFAR100_DIR=...] [CIFAR10_DIR=...] [IMAGENET_R_DIR=... IMAGENET_R_SPLIT=...] \\
       [BACKBONES=...] [SEEDS=...] [COVARIANCES=...] [SAVE_ROOT=...] [FEATURE_CACHE=...] [PYTHON=...] \\
       bash slda_benchmark.sh [extra experiment.py flags]

  BENCHMARKS        any of (default: cifar100_b0_inc10):
                      cifar100_b0_inc10    CIFAR-100, 10 classes per batch (CIFAR100_DIR: cifar-100-python/)
                      cifar10_b0_inc2      CIFAR-10, 2 classes per batch (CIFAR10_DIR: cifar-10-batches-py/)
                      imagenet_r_b0_inc20  ImageNet-R, 20 classes per batch (IMAGENET_R_DIR: its class folders;
                                           IMAGENET_R_SPLIT: the split file, a line "<path> train|test" per image)
  BACKBONES         networks as ARCH@WEIGHTS (--arch and --weights, weights from the local caches), or ARCH alone
                    for its default weights (a timm:NAME.TAG's own) or a --base_init_ckpt among the extra flags
                    (default: resnet18@IMAGENET1K_V1)
  SEEDS             class-order seeds, numpy's draw (default: 1993)
  COVARIANCES       (default: plastic fixed; fixed keeps the base initialisation's estimate)
  SAVE_ROOT         where results go (default: streaming_experiments/benchmarks); one per set of extra flags:
                    a folder holding a run of other settings stops the script
  FEATURE_CACHE     feature cache shared by every run (default: \$SAVE_ROOT/feature_cache)
  PYTHON            interpreter (default: this project's .venv/bin/python if present, else python3)
USAGE
  exit 2
}

BENCHMARKS=${BENCHMARKS:-cifar100_b0_inc10}
BACKBONES=${BACKBONES:-resnet18@IMAGENET1K_V1}
SEEDS=${SEEDS:-1993}
COVARIANCES=${COVARIANCES:-plastic fixed}
SAVE_ROOT=${SAVE_ROOT:-streaming_experiments/benchmarks}
FEATURE_CACHE=${FEATURE_CACHE:-$SAVE_ROOT/feature_cache}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON=$here/.venv/bin/python; else PYTHON=python3; fi
fi
for covariance in $COVARIANCES; do     # before any run, not after the runs of the values before it
  case "$covariance" in
    plastic | fixed) ;;
    *) echo "error: COVARIANCES: unknown covariance '$covariance' (accepted: plastic, fixed)" >&2; exit 2 ;;
  esac
done

need() {    # need NAME: the variable NAME must be set
  [ -n "${!1:-}" ] || { echo "error: $1 is not set (needed by benchmark $benchmark)" >&2; usage; }
}

folders=()
for benchmark in $BENCHMARKS; do
  case "$benchmark" in
    cifar100_b0_inc10) need CIFAR100_DIR; data=(--dataset cifar100 --images_dir "$CIFAR100_DIR" --class_increment 10) ;;
    cifar10_b0_inc2) need CIFAR10_DIR; data=(--dataset cifar10 --images_dir "$CIFAR10_DIR" --class_increment 2) ;;
    imagenet_r_b0_inc20)
      need IMAGENET_R_DIR; need IMAGENET_R_SPLIT
      data=(--dataset imagefolder --images_dir "$IMAGENET_R_DIR" --split_file "$IMAGENET_R_SPLIT" --class_increment 20) ;;
    *) echo "error: unknown benchmark $benchmark" >&2; usage ;;
  esac
  for backbone in $BACKBONES; do
    arch=${backbone%%@*}; weights=()
    [ "$arch" = "$backbone" ] || weights=(--weights "${backbone#*@}")
    for seed in $SEEDS; do
      for covariance in $COVARIANCES; do
        settings=(--streaming_update_sigma)
        [ "$covariance" = plastic ] || settings=(--no-streaming_update_sigma)
        name=${backbone//[:@\/]/_}
        save_dir=$SAVE_ROOT/${benchmark}_${name}_seed${seed}_$covariance
        folders+=("$save_dir")
        # experiment.py --resume decides, from every setting (extra flags included): a finished run of the same
        # settings is left as it is, an unfinished one continued, a new folder started; a folder holding a run of
        # other settings is refused, which stops the script (set -e) rather than reprinting the old results
        echo "== $benchmark, $backbone, class order seed $seed, $covariance covariance =="
        "$PYTHON" "$here/experiment.py" "${data[@]}" --arch "$arch" "${weights[@]}" --class_order_rng numpy \
          --class_order_seed "$seed" "${settings[@]}" --feature_cache "$FEATURE_CACHE" --save_dir "$save_dir" \
          --resume "$@"
      done
    done
  done
done
table=$SAVE_ROOT/table_${BENCHMARKS// /_}.md
"$PYTHON" "$here/summarize_runs.py" "${folders[@]}" --output "$table"
echo "table saved to $table"
