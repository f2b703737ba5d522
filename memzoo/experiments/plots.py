"""The report's figures (matplotlib, Agg backend: no display needed)."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

MAX_LEGEND = 30  # more runs than this: no legend (it would hide the curves)
REDUCERS = {"max": max, "min": min, "mean": lambda v: sum(v) / len(v)}


def loss_curves(curves: dict[str, list[dict]], path: Path) -> None:
  """Train loss (left) and val loss (right) against step, one line per run."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for run, records in curves.items():
    for ax, split in zip(axes, ("train", "val")):
      points = sorted({r["step"]: r["loss"] for r in records
                       if r.get("split") == split and "loss" in r}.items())
      if points:
        ax.plot(*zip(*points), label=run, marker="." if split == "val" else None, lw=1)
  for ax, split in zip(axes, ("train", "val")):
    ax.set(title=f"{split} loss", xlabel="step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("loss")
  if 0 < len(curves) <= MAX_LEGEND:
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _values(row: dict, keys: list[str]) -> tuple:
  return tuple(row.get(k) for k in keys)


def _order(values: tuple) -> tuple:
  """Sorts numbers numerically, before text."""
  return tuple((0, v, "") if _is_number(v) else (1, 0, str(v)) for v in values)


def _title(keys: list[str], values: tuple) -> str:
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values))


def series(rows: list[dict], x: str, y: str, group: list[str], facet: list[str],
           reduce: str) -> tuple[dict, list[str]]:
  """`({panel: {line: [(x, y), ...]}}, categories)`: `y` against `x` per value of the `facet`
  columns (panels) and of the `group` columns (lines), runs at one point combined by `reduce`.

  Panels and lines are value tuples in sorted order; a non-numeric `x` is plotted at the index of
  its label in `categories` (empty when `x` is numeric).
  """
  rows = [r for r in rows if _is_number(r.get(y)) and not math.isnan(r[y]) and x in r]
  numeric = all(_is_number(r[x]) for r in rows)
  categories = [] if numeric else sorted({str(r[x]) for r in rows})
  points = {}
  for r in rows:
    at = r[x] if numeric else categories.index(str(r[x]))
    line = points.setdefault(_values(r, facet), {}).setdefault(_values(r, group), {})
    line.setdefault(at, []).append(r[y])
  out = {}
  for panel in sorted(points, key=_order):
    lines = points[panel]
    out[panel] = {line: [(at, REDUCERS[reduce](lines[line][at])) for at in sorted(lines[line])]
                  for line in sorted(lines, key=_order)}
  return out, categories


def metric_vs(rows: list[dict], x: str, y: str, group: list[str], facet: list[str], reduce: str,
              logx: bool, path: Path) -> None:
  """Plots `series(...)`: one panel per facet value, one line per group value."""
  panels, categories = series(rows, x, y, group, facet, reduce)
  panels = panels or {(): {}}
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False,
                           sharey=True)
  for ax, (panel, lines) in zip(axes[0], panels.items()):
    for line, points in lines.items():
      ax.plot(*zip(*points), marker="o", label=" ".join(str(v) for v in line) or None)
    ax.set(title=_title(facet, panel), xlabel=x)
    if logx and not categories:
      ax.set_xscale("log", base=2)
    if categories:
      ax.set_xticks(np.arange(len(categories)), categories, rotation=30, ha="right")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(y)
  if "accuracy" in y:
    axes[0][0].set_ylim(-0.02, 1.02)
  if group:
    axes[0][-1].legend(fontsize=7, title=",".join(group), loc="upper left",
                       bbox_to_anchor=(1.02, 1))
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
