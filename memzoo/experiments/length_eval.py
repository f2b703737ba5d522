"""Length generalisation: trained runs evaluated on their task at other sequence lengths.

  python -m memzoo.experiments.length_eval DIR [DIR ...] --seq_lens 256 1024 4096
      [--examples 64] [--batch 8] [--out results.md]

Each DIR is a run directory (config.json + checkpoints/) or a sweep directory holding runs. The
latest checkpoint of every run is evaluated on `--examples` validation examples of its own task
rebuilt with `data.seq_len = L` for each L (e.g. S-NIAH passkey retrieval trained at 256 tokens,
read at 1K-4K). Each run gets a `length_eval.json` (`{L: {"loss": .., "accuracy": ..}}`); the
table of accuracies (one row per run, one column per L) is printed and, with --out, written.
"""

import argparse
import json
from pathlib import Path

import jax
from flax import nnx

from memzoo.data import pipeline, tasks
from memzoo.errors import UserError
from memzoo.experiments import cli
from memzoo.experiments.report import find_runs
from memzoo.models.backbone import has_memory_tables
from memzoo.train import config as config_lib
from memzoo.train.sample import load_run
from memzoo.train.step import make_eval_step
from memzoo.train.trainer import mean_token_stats


def evaluate_at(config, model, seq_len: int, examples: int, batch: int) -> dict:
  """Mean loss and accuracy of `model` over `examples` val examples of its task at `seq_len`."""
  config = config.copy_and_resolve_references()
  config.data.seq_len = seq_len
  task = tasks.build_task(config_lib.data_options(config))
  graphdef, params = nnx.split(model)
  eval_step = jax.jit(make_eval_step(graphdef, collect_reads=has_memory_tables(config.model)))
  eval_set = pipeline.eval_dataset(task, "val", global_batch=batch,
                                   num_batches=max(examples // batch, 1), seed=config.seed + 1)
  return mean_token_stats(eval_step, params, eval_set)


def run_label(root: Path, run: Path, config) -> str:
  mixers = "+".join(config.model.mixers)
  name = str(run.relative_to(root)) if run != root else run.name
  return f"{mixers} ({name})"


def markdown_table(rows: list[tuple[str, dict]], seq_lens: list[int], trained: dict) -> str:
  header = "| run | trained at | " + " | ".join(f"acc @ {n}" for n in seq_lens) + " |"
  lines = [header, "|" + "---|" * (len(seq_lens) + 2)]
  for label, results in rows:
    cells = " | ".join(f"{results[n]['accuracy']:.3f}" for n in seq_lens)
    lines.append(f"| {label} | {trained[label]} | {cells} |")
  return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m memzoo.experiments.length_eval",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("dirs", nargs="+", help="run or sweep directories")
  parser.add_argument("--seq_lens", nargs="+", type=int, required=True)
  parser.add_argument("--examples", type=int, default=64, help="val examples per length")
  parser.add_argument("--batch", type=int, default=8, help="examples per eval batch")
  parser.add_argument("--out", help="also write the markdown table here")
  parser.add_argument("--debug", action="store_true", help="raise errors with a traceback")
  return parser


def main(argv=None) -> None:
  args = _parser().parse_args(argv)
  if args.batch < 1 or args.examples < args.batch:
    raise UserError(f"--examples {args.examples} / --batch {args.batch}: need "
                    "examples >= batch >= 1")
  rows, trained = [], {}
  for root in map(Path, args.dirs):
    runs = find_runs(root)
    if not runs:
      raise UserError(f"{str(root)!r} holds no run (no config.json below it); pass a run directory")
    for run in runs:
      config, _, model = load_run(run)
      label = run_label(root, run, config)
      results = {n: evaluate_at(config, model, n, args.examples, args.batch)
                 for n in args.seq_lens}
      (run / "length_eval.json").write_text(json.dumps(results, indent=1))
      rows.append((label, results))
      trained[label] = config.data.seq_len
      print(label, {n: round(r["accuracy"], 3) for n, r in results.items()}, flush=True)
  table = markdown_table(rows, args.seq_lens, trained)
  print(table)
  if args.out:
    Path(args.out).write_text(table)


if __name__ == "__main__":
  cli.run(main)
