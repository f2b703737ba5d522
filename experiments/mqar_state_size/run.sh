#!/usr/bin/env bash
# MQAR accuracy against decode-state size for every registered mixer (see README.md).
#
#   experiments/mqar_state_size/run.sh           # the study; copies its tables and plots here
#   experiments/mqar_state_size/run.sh --smoke   # 2 runs x 20 steps: the pipeline end to end
#   experiments/mqar_state_size/run.sh --config.train.steps=3000   # overrides apply to every run
#
# Runs train under runs/ (checkpoints are not committed); re-running resumes an interrupted sweep.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
HERE=experiments/mqar_state_size

SMOKE=false
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=true
  shift
fi

if $SMOKE; then
  RUNS=runs/mqar_state_size_smoke
  "$PYTHON" -m memzoo.experiments.sweep configs/mqar.py --workdir "$RUNS" --parallel 2 \
      --only '^mixers=attention,d_model=32,seq_len=(64|128),' \
      --config.train.steps=20 --config.train.warmup_steps=5 --config.train.log_every=5 \
      --config.train.eval_every=10 --config.train.eval_steps=2 --config.train.checkpoint_every=10 \
      "$@"
else
  RUNS=${RUNS:-runs/mqar_state_size}
  "$PYTHON" -m memzoo.experiments.sweep configs/mqar.py --workdir "$RUNS" --parallel 2 "$@"
fi

"$PYTHON" -m memzoo.experiments.report "$RUNS" --state_size --x state_size --y val/accuracy \
    --group model.mixers --facet data.seq_len,data.num_kv_pairs --logx

if ! $SMOKE; then
  cp "$RUNS"/results.csv "$RUNS"/results.md "$RUNS"/*.png "$HERE"/
fi
