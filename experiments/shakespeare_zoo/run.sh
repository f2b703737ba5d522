#!/usr/bin/env bash
# Every registered mixer on the default Shakespeare run (see README.md).
#
#   experiments/shakespeare_zoo/run.sh      # trains the sweep (resumes it), copies tables and plots here
#
# Runs train under runs/ (checkpoints are not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
RUNS=${RUNS:-runs/shakespeare_zoo}
"$PYTHON" -m memzoo.experiments.sweep configs/shakespeare_zoo.py --workdir "$RUNS" "$@"
"$PYTHON" -m memzoo.experiments.report "$RUNS" --state_size
cp "$RUNS"/results.csv "$RUNS"/results.md "$RUNS"/loss_curves.png experiments/shakespeare_zoo/
