"""`memzoo-report` (also `python -m memzoo.experiments.report`): tables and plots of a sweep.

  memzoo-report DIR [--x KEY --y KEY [--group KEYS] [--facet KEYS] [--logx]] [--state_size]

Every directory under DIR holding a `config.json` is a run. Writes into DIR:
  results.csv      one row per run: `run` (its path under DIR), `done` (its last step was
                   evaluated), `step`, the final value of every logged metric (`train/<name>`,
                   `val/<name>`: the last record of each split in metrics.jsonl), `state_size`
                   with --state_size, and every config field (dotted: `model.d_model`)
  results.md       the same rows with only the config fields that differ between runs
  loss_curves.png  train and val loss against step, one line per run
  <y>_vs_<x>.png   with --x and --y: a metric against a hyperparameter, one line per --group,
                   one panel per --facet (several runs at one point: the best, see --reduce)
"""

import argparse
import csv
import json
import math
import re
from pathlib import Path

from memzoo.errors import UserError
from memzoo.experiments import cli, plots
from memzoo.experiments.hyper import value_label

SUMMARY_METRICS = ("train/loss", "train/accuracy")  # shown in results.md besides every val metric


def flatten(tree: dict, prefix: str = "") -> dict:
  """`{"model": {"d_model": 64}}` -> `{"model.d_model": 64}`."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def read_metrics(path: Path) -> list[dict]:
  """The records of a metrics.jsonl, skipping a line cut short by an interrupted run."""
  if not path.is_file():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def final_metrics(records: list[dict]) -> dict:
  """`{"<split>/<name>": value}` from the last record of each split (by step), and `step`."""
  last = {}
  for record in records:  # a resumed run may log a step twice; the later record wins
    split = record.get("split")
    if split is not None and record["step"] >= last.get(split, {"step": -1})["step"]:
      last[split] = record
  final = {f"{split}/{name}": value for split, record in last.items()
           for name, value in record.items() if name not in ("step", "split")}
  final["step"] = max((r["step"] for r in last.values()), default=0)
  return final


def _natural(path: Path) -> list:
  """Sorts `seq_len=64` before `seq_len=128`."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> list[Path]:
  """The directories under `root` (itself included) that hold a run's config.json."""
  return sorted((p.parent for p in root.rglob("config.json")
                 if "checkpoints" not in p.relative_to(root).parts), key=_natural)


def collect(root: Path, with_state_size: bool = False) -> tuple[list[dict], dict[str, list]]:
  """`(rows, curves)`: one row per run (see the module doc) and each run's metric records."""
  rows, curves = [], {}
  for run_dir in find_runs(root):
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    try:
      config = json.loads((run_dir / "config.json").read_text())
    except json.JSONDecodeError as e:
      raise UserError(f"{run_dir / 'config.json'}: not valid JSON ({e})") from None
    records = read_metrics(run_dir / "metrics.jsonl")
    fields = {k: value_label(v) if isinstance(v, list) else v for k, v in flatten(config).items()}
    metrics = final_metrics(records)
    steps = fields.get("train.steps")
    done = any(r.get("split") == "val" and r["step"] == steps for r in records)
    row = {"run": name, "done": done, **metrics}
    if with_state_size:
      row["state_size"] = _state_size(name, config)
    rows.append({**row, **{k: v for k, v in fields.items() if k not in row}})
    curves[name] = records
  return rows, curves


def _state_size(name: str, config: dict) -> int:
  from memzoo.experiments.state_size import state_size  # builds models: imports JAX and the zoo
  from memzoo.train import config as config_lib
  try:
    cfg = config_lib.from_json(json.dumps(config))
    return state_size(cfg.model, cfg.data.seq_len)
  except Exception as e:  # a mixer missing from this checkout, or a config from another version
    raise UserError(f"run {name}: cannot build its model to measure the state size: "
                    f"{cli.one_line(e)}") from None


def metric_columns(rows: list[dict]) -> list[str]:
  return sorted({k for row in rows for k in row if "/" in k})


def config_columns(rows: list[dict]) -> list[str]:
  reserved = {"run", "done", "step", "state_size"}
  return sorted({k for row in rows for k in row if "/" not in k and k not in reserved})


def varying(rows: list[dict], columns: list[str]) -> list[str]:
  """The columns whose value differs between rows."""
  return [c for c in columns if len({json.dumps(row.get(c), default=str) for row in rows}) > 1]


def _lead_columns(rows):
  return ["run", "done", "step"] + (["state_size"] if any("state_size" in r for r in rows) else [])


def write_csv(rows: list[dict], path: Path) -> None:
  columns = _lead_columns(rows) + metric_columns(rows) + config_columns(rows)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4g}"
  return str(value).replace("|", "\\|")


def write_markdown(rows: list[dict], path: Path, title: str) -> None:
  metrics = [m for m in metric_columns(rows) if m.startswith("val/") or m in SUMMARY_METRICS]
  columns = ["run"] + varying(rows, config_columns(rows)) + _lead_columns(rows)[1:] + metrics
  lines = [f"# {title}", "", f"{len(rows)} runs; final metrics (the last logged value).", "",
           "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
  path.write_text("\n".join(lines) + "\n")


def _keys(text: str | None) -> list[str]:
  return [k for k in (text or "").split(",") if k]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="memzoo-report", description="Collect every run under DIR into results.csv, "
      "results.md, loss_curves.png and (with --x/--y) a metric-vs-hyperparameter plot.")
  parser.add_argument("dir", help="sweep directory (runs are its subdirectories with config.json)")
  parser.add_argument("--x", help="column on the x axis, e.g. model.d_model or state_size")
  parser.add_argument("--y", help="metric on the y axis, e.g. val/accuracy")
  parser.add_argument("--group", help="column(s), comma-separated: one line per value")
  parser.add_argument("--facet", help="column(s), comma-separated: one panel per value")
  parser.add_argument("--reduce", choices=("max", "min", "mean"), default="max",
                      help="several runs at one point (e.g. a learning-rate sweep): their max "
                      "(Zoology reports the best learning rate), min or mean")
  parser.add_argument("--logx", action="store_true", help="logarithmic x axis")
  parser.add_argument("--state_size", action="store_true",
                      help="add state_size: decode-state floats per sequence (Zoology's x axis)")
  parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
  return parser


def main(argv=None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  if (args.x is None) != (args.y is None):
    parser.error("--x and --y go together")
  root = Path(args.dir)
  if not root.is_dir():
    raise UserError(f"{args.dir}: no such directory; pass a sweep directory")
  rows, curves = collect(root, args.state_size)
  if not rows:
    raise UserError(f"{args.dir}: holds no run (no config.json below it)")
  if args.x:
    missing = [k for k in [args.x, args.y, *_keys(args.group), *_keys(args.facet)]
               if not any(k in row for row in rows)]
    if missing:
      raise UserError(f"no run has column(s) {missing}; the columns are: "
                      f"{', '.join(_lead_columns(rows) + metric_columns(rows))} and the config "
                      "fields (model.d_model, ...)"
                      + ("; state_size needs --state_size" if "state_size" in missing else ""))
  write_csv(rows, root / "results.csv")
  write_markdown(rows, root / "results.md", f"Results of {root.resolve().name}")
  plots.loss_curves(curves, root / "loss_curves.png")
  written = ["results.csv", "results.md", "loss_curves.png"]
  if args.x:
    name = f"{args.y}_vs_{args.x}".replace("/", "-") + ".png"
    plots.metric_vs(rows, args.x, args.y, _keys(args.group), _keys(args.facet), args.reduce,
                    args.logx, root / name)
    written.append(name)
  print(f"{len(rows)} runs; wrote {', '.join(written)} in {root}")


def console_main() -> None:
  """The `memzoo-report` console script."""
  cli.run(main)


if __name__ == "__main__":
  console_main()
