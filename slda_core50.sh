#!/usr/bin/env bash
# Deep SLDA on CORe50, as in Hayes et al.'s experiments: the four orderings of the stream (iid, class_iid,
# instance, class_instance), 10 seeds each, with a plastic and a fixed covariance, a ResNet-18 pre-trained on
# ImageNet-1K. Plastic runs have no base initialisation, as in the published protocol. Fixed runs initialise
# on the first batch (--base_init): without that the fixed covariance is the starting identity and SLDA is
# exactly nearest class mean. Every run shares one feature cache, so the network sees each image once.
# Finished runs are skipped and interrupted ones resumed, so the script can be run again after a stop; a folder
# holding a run of other settings (other extra flags: the folder names leave them out) stops it, so run other
# extra flags under another SAVE_ROOT.
# Ends with a table of mean and standard deviation over seeds (printed, and saved as Markdown).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat >&2 <<USAGE
usage: CORE50_DIR=/path/to/core50_128x128 [SAVE_ROOT=...] [FEATURE_CACHE=...] [OFFLINE_DIR=...] [SEEDS=...] \\
       [ORDERINGS=...] [COVARIANCES=...] [PYTHON=...] bash slda_core50.sh [extra experiment.py flags]

  CORE50_DIR     CORe50's core50_128x128/ folder, with s1 ... s11 (required)
  SAVE_ROOT      where results go (default: streaming_experiments/core50); one per set of extra flags: a
                 folder holding a run of other settings stops the script
  FEATURE_CACHE  feature cache shared by every run (default: \$SAVE_ROOT/feature_cache)
  OFFLINE_DIR    folder with <ordering>.json offline accuracies per ordering, for Omega_all (optional)
  SEEDS          ordering seeds (default: 0 1 2 3 4 5 6 7 8 9)
  ORDERINGS      (default: iid class_iid instance class_instance)
  COVARIANCES    (default: plastic fixed; fixed runs initialise on the first batch, --base_init)
  PYTHON         interpreter (default: this project's .venv/bin/python if present, else python3)
USAGE
  exit 2
}

[ -n "${CORE50_DIR:-}" ] || { echo "error: CORE50_DIR is not set" >&2; usage; }
SAVE_ROOT=${SAVE_ROOT:-streaming_experiments/core50}
FEATURE_CACHE=${FEATURE_CACHE:-$SAVE_ROOT/feature_cache}
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9}
ORDERINGS=${ORDERINGS:-iid class_iid instance class_instance}
COVARIANCES=${COVARIANCES:-plastic fixed}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON=$here/.venv/bin/python; else PYTHON=python3; fi
fi
for covariance in $COVARIANCES; do     # before any run: a typo would otherwise run as fixed
  case "$covariance" in
    plastic | fixed) ;;
    *) echo "error: COVARIANCES: unknown covariance '$covariance' (accepted: plastic, fixed)" >&2; exit 2 ;;
  esac
done

for ordering in $ORDERINGS; do
  offline=()
  if [ -n "${OFFLINE_DIR:-}" ] && [ -f "$OFFLINE_DIR/$ordering.json" ]; then
    offline=(--offline_accuracies "$OFFLINE_DIR/$ordering.json")
  fi
  for seed in $SEEDS; do
    for covariance in $COVARIANCES; do
      # Fixed runs of earlier releases (no base initialisation, so nearest class mean) were saved as *_fixed:
      # a new folder name keeps them from being taken for finished runs of this setting.
      if [ "$covariance" = plastic ]; then
        settings=(--streaming_update_sigma); name=plastic
      else
        settings=(--no-streaming_update_sigma --base_init); name=fixed_base_init
      fi
      save_dir=$SAVE_ROOT/core50_${ordering}_seed${seed}_$name
      # experiment.py --resume decides, from every setting (extra flags included): a finished run of the same
      # settings is left as it is, an unfinished one continued, a new folder started; a folder holding a run of
      # other settings is refused, which stops the script (set -e) rather than reprinting the old results
      echo "== $ordering, seed $seed, $covariance covariance =="
      "$PYTHON" "$here/experiment.py" --dataset core50 --images_dir "$CORE50_DIR" --ordering "$ordering" \
        --ordering_seed "$seed" "${settings[@]}" --feature_cache "$FEATURE_CACHE" --save_dir "$save_dir" \
        "${offline[@]}" --resume "$@"
    done
  done
done
"$PYTHON" "$here/summarize_runs.py" "$SAVE_ROOT"/core50_* --output "$SAVE_ROOT/table_core50.md"
echo "table saved to $SAVE_ROOT/table_core50.md"
