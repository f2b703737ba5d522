#!/usr/bin/env bash
# MQAR accuracy of mom vs gated_deltanet vs attention at equal d_model, with decode-state size
# (configs/mqar_mom.py; see README.md).
#
#   experiments/mom/run.sh           # the study (3 runs, ~10 min each on 2 CPU cores, 2 at a time)
#   experiments/mom/run.sh --smoke   # 3 runs x 20 steps: the pipeline end to end
#   experiments/mom/run.sh --config.train.steps=3000   # overrides apply to every run
#
# Runs train under runs/ (checkpoints are not committed); re-running resumes an interrupted sweep.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
HERE=experiments/mom

SMOKE=false
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=true
  shift
fi

if $SMOKE; then
  RUNS=runs/mqar_mom_smoke
  "$PYTHON" -m memzoo.experiments.sweep configs/mqar_mom.py --workdir "$RUNS" --parallel 2 \
      --config.train.steps=20 --config.train.warmup_steps=5 --config.train.log_every=5 \
      --config.train.eval_every=10 --config.train.eval_steps=2 --config.train.checkpoint_every=10 \
      "$@"
else
  RUNS=${RUNS:-runs/mqar_mom}
  "$PYTHON" -m memzoo.experiments.sweep configs/mqar_mom.py --workdir "$RUNS" --parallel 2 "$@"
fi

"$PYTHON" -m memzoo.experiments.report "$RUNS" --state_size --x state_size --y val/accuracy \
    --group model.mixers --logx

if ! $SMOKE; then
  cp "$RUNS"/results.csv "$RUNS"/results.md "$RUNS"/*.png "$HERE"/
fi
