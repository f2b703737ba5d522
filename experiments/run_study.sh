#!/usr/bin/env bash
# Runs one study of experiments/: trains its sweep, reports it, and copies the tables and plots
# into the study's directory (as <prefix>results.{csv,md} and <prefix><plot>.png).
#
#   experiments/run_study.sh STUDY                  # the study, into runs/STUDY (or $RUNS)
#   experiments/run_study.sh STUDY --smoke          # a few runs x 20 steps: checks it end to end
#   experiments/run_study.sh STUDY --config.train.steps=5000   # overrides apply to every run
#
# STUDY: mqar_state_size | mom | memory_capacity | memory_shakespeare | shakespeare_zoo | titans_mqar.
# Re-running resumes an interrupted sweep (checkpoints stay under runs/, which is not committed).
# A smoke run copies its results into its own run directory, not into experiments/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

STUDY=${1:-}
PREFIX=""
case "$STUDY" in
  mqar_state_size)
    CONFIG=configs/mqar.py DEST=experiments/mqar_state_size
    SMOKE_RUNS='^mixers=attention,d_model=32,seq_len=(64|128),'
    REPORT=(--state_size --x state_size --y val/accuracy --group model.mixers
            --facet data.seq_len,data.num_kv_pairs --logx) ;;
  mom)
    CONFIG=configs/mqar_mom.py DEST=experiments/mom PREFIX=mqar_ SMOKE_RUNS='.'
    REPORT=(--state_size --x state_size --y val/accuracy --group model.mixers --logx) ;;
  memory_capacity)
    CONFIG=configs/memory_capacity.py DEST=experiments/memory_layers PREFIX=capacity_
    SMOKE_RUNS='num_facts=1024$'
    REPORT=(--x data.num_facts --y val/accuracy --group model.memory_ffn --logx) ;;
  memory_shakespeare)
    CONFIG=configs/shakespeare_pkm.py DEST=experiments/memory_layers PREFIX=shakespeare_
    SMOKE_RUNS='.' REPORT=() ;;
  shakespeare_zoo)
    CONFIG=configs/shakespeare_zoo.py DEST=experiments/shakespeare_zoo
    SMOKE_RUNS='mixers=(attention|gla)$' REPORT=(--state_size) ;;
  titans_mqar)
    CONFIG=configs/titans_mqar.py DEST=experiments/titans PREFIX=mqar_
    SMOKE_RUNS='^depth=1,max_lr=0.1,seq_len=64,'
    REPORT=(--state_size --x model.lmm.depth --y val/accuracy --group model.lmm.max_lr
            --facet data.seq_len,data.num_kv_pairs) ;;
  *)
    studies=mqar_state_size\|mom\|memory_capacity\|memory_shakespeare\|shakespeare_zoo\|titans_mqar
    echo "usage: $0 $studies [--smoke] [--config.<field>=<value> ...]" >&2
    exit 2 ;;
esac
shift

if [[ "${1:-}" == "--smoke" ]]; then
  shift
  RUNS=${RUNS:-runs/${STUDY}_smoke}
  DEST=$RUNS/copied
  "$PYTHON" -m memzoo.experiments.sweep "$CONFIG" --workdir "$RUNS" --parallel 2 \
      --only "$SMOKE_RUNS" --config.train.steps=20 --config.train.warmup_steps=5 \
      --config.train.log_every=5 --config.train.eval_every=10 --config.train.eval_steps=2 \
      --config.train.checkpoint_every=10 "$@"
else
  RUNS=${RUNS:-runs/$STUDY}
  "$PYTHON" -m memzoo.experiments.sweep "$CONFIG" --workdir "$RUNS" --parallel 2 "$@"
fi

"$PYTHON" -m memzoo.experiments.report "$RUNS" "${REPORT[@]}"
mkdir -p "$DEST"
for file in "$RUNS"/results.csv "$RUNS"/results.md "$RUNS"/*.png; do
  cp "$file" "$DEST/$PREFIX$(basename "$file")"
done
