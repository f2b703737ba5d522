#!/usr/bin/env bash
# Studies (2) and (3) of README.md: trains a study's sweep, reports it, copies its tables and plots
# here as <study>_results.{csv,md} and <study>_<plot>.png.
#
#   experiments/memory_layers/run.sh capacity          # dense vs pkm vs peer x N facts (9 runs)
#   experiments/memory_layers/run.sh shakespeare       # dense vs pkm in the middle block (2 runs)
#   experiments/memory_layers/run.sh capacity --smoke  # a few runs x 20 steps: end to end check
#   experiments/memory_layers/run.sh capacity --config.train.steps=5000   # applies to every run
#
# Runs train under runs/ (checkpoints are not committed); re-running resumes an interrupted sweep.
# A smoke run copies its results into its own run directory, not here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}

STUDY=${1:-}
case "$STUDY" in
  capacity)
    CONFIG=configs/memory_capacity.py
    SMOKE_RUNS='num_facts=1024$'
    REPORT=(--x data.num_facts --y val/accuracy --group model.memory_ffn --logx) ;;
  shakespeare)
    CONFIG=configs/shakespeare_pkm.py
    SMOKE_RUNS='.'
    REPORT=() ;;
  *)
    echo "usage: $0 capacity|shakespeare [--smoke] [--config.<field>=<value> ...]" >&2
    exit 2 ;;
esac
shift

if [[ "${1:-}" == "--smoke" ]]; then
  shift
  RUNS=${RUNS:-runs/memory_${STUDY}_smoke}
  DEST=$RUNS/copied
  "$PYTHON" -m memzoo.experiments.sweep "$CONFIG" --workdir "$RUNS" --parallel 2 \
      --only "$SMOKE_RUNS" --config.train.steps=20 --config.train.warmup_steps=5 \
      --config.train.log_every=5 --config.train.eval_every=10 \
      --config.train.checkpoint_every=10 "$@"
else
  RUNS=${RUNS:-runs/memory_${STUDY}}
  DEST=experiments/memory_layers
  "$PYTHON" -m memzoo.experiments.sweep "$CONFIG" --workdir "$RUNS" --parallel 2 "$@"
fi

"$PYTHON" -m memzoo.experiments.report "$RUNS" "${REPORT[@]}"
mkdir -p "$DEST"
for file in "$RUNS"/results.csv "$RUNS"/results.md "$RUNS"/*.png; do
  cp "$file" "$DEST/${STUDY}_$(basename "$file")"
done
