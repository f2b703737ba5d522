"""The benchmark report: `results.md` (tables, targets), `results.json` (every row) and plots."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

FWD_BWD_FLAT, DECODE_FLAT, TRAIN_MFU = 0.15, 0.10, 0.50  # the targets of issue 11
FLAT_FROM, FLAT_TO = 1024, 16384  # lengths / contexts over which the flatness targets hold


def spread(cells: dict) -> float | None:
  """`max / min - 1` of the numeric cells at keys in [FLAT_FROM, FLAT_TO]; None if < 2 cells."""
  values = [v for k, v in cells.items() if FLAT_FROM <= k <= FLAT_TO and isinstance(v, float)]
  return max(values) / min(values) - 1 if len(values) >= 2 else None


def _verdict(value: float | None, limit: float) -> str:
  if value is None:
    return "n/a (needs two lengths in 1K-16K)"
  return f"{100 * value:.1f}% ({'meets' if value <= limit else 'misses'} <= {100 * limit:.0f}%)"


def _cell(value) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def grid_table(rows: dict, columns: list, label: str, extra: dict | None = None) -> list[str]:
  """Markdown table: one row per key of `rows` (a {column: cell} dict), `extra` columns after."""
  extra = extra or {}
  header = [label] + [f"{c:,}" for c in columns] + list(extra)
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for name, cells in rows.items():
    more = [extra[col].get(name, "") for col in extra]
    lines.append("| " + " | ".join([name] + [_cell(cells.get(c, "")) for c in columns] + more)
                 + " |")
  return lines


def mixers_section(result: dict) -> list[str]:
  us, gflops = result["us_per_token"], result["gflops"]
  flat = {n: _verdict(spread(us[n]), FWD_BWD_FLAT) for n in result["recurrent"]}
  return ["## Mixer fwd+bwd: microseconds per token", "",
          f"One layer, {result['setup']}; median of {result['repeats']} calls or more, as many "
          f"as fill {result.get('min_seconds', 0):g} s. Flatness: "
          f"max/min - 1 of the time per token over T in {FLAT_FROM:,}-{FLAT_TO:,} (recurrent "
          f"mixers; target <= {100 * FWD_BWD_FLAT:.0f}%).", "",
          *grid_table(us, result["lengths"], "mixer \\ T", {"flatness": flat}), "",
          "Achieved model GFLOP/s (forward + backward FLOPs of `flops()` / wall time):", "",
          *grid_table(gflops, result["lengths"], "mixer \\ T")]


def decode_section(result: dict) -> list[str]:
  us = result["us_per_step"]
  flat = {n: _verdict(spread(us[n]), DECODE_FLAT) for n in result["recurrent"]}
  compiles = {n: str(c) for n, c in result["compiles"].items()}
  return ["## Decode: microseconds per step after a context", "",
          f"One layer, {result['setup']}; a jitted `lax.scan` of {result['steps']} `step()` calls "
          f"after `prefill` of the context, per step, median of {result['repeats']}. `compiles`: "
          "traces of the step scan over all contexts (1 = jitted once). Attention reads its "
          "preallocated KV cache of context + steps slots: O(max_len) by design. Flatness as "
          f"above (target <= {100 * DECODE_FLAT:.0f}%).", "",
          *grid_table(us, result["contexts"], "mixer \\ context",
                      {"compiles": compiles, "flatness": flat})]


def train_section(rows: list[dict]) -> list[str]:
  lines = ["## Train step MFU", "",
           "The trainer's jitted step (forward, backward, AdamW; donated state) on random tokens; "
           "median over the timed steps. MFU = `train_flops` / step time / peak (target >= "
           f"{100 * TRAIN_MFU:.0f}% for `default`).", "",
           "| variant | dtype | B x T | s/step | CPU s/step | TFLOP/step | GFLOP/s | peak GFLOP/s "
           "| MFU |", "|---|---|---|---|---|---|---|---|---|"]
  default = [r["mfu"] for r in rows if r["variant"] == "default"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['dtype']} | {r['batch']} x {r['seq_len']} | "
                 f"{r['step_s']:.3f} | {r['step_cpu_s']:.3f} | {r['train_flops'] / 1e12:.3f} | "
                 f"{r['flops_per_s'] / 1e9:.2f} | {r['peak_flops_per_s'] / 1e9:.2f} | "
                 f"{100 * r['mfu']:.1f}% |")
  sources = sorted({f"{r['dtype']}: {r['peak_source']}" for r in rows})
  verdict = (f"{100 * default[0]:.1f}% ({'meets' if default[0] >= TRAIN_MFU else 'misses'} "
             f">= {100 * TRAIN_MFU:.0f}%)" if default else "n/a (`default` not run)")
  return lines + ["", f"MFU of `default`: {verdict}.", "Peaks: " + "; ".join(sources) + "."]


def _plot_grid(cells: dict, path: Path, xlabel: str, ylabel: str, title: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, row in cells.items():
    points = sorted((k, v) for k, v in row.items() if isinstance(v, float))
    if points:
      ax.plot(*zip(*points), marker="o", label=name)
  ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def _plot_mfu(rows: list[dict], path: Path) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.barh([r["variant"] for r in rows], [100 * r["mfu"] for r in rows])
  ax.axvline(100 * TRAIN_MFU, color="k", ls="--", lw=1)
  ax.set(xlabel="MFU (%)", title="train step MFU")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def write(out: Path, header: list[str], results: dict) -> Path:
  """Writes results.md, results.json and the plots of whichever suites ran into `out`."""
  out.mkdir(parents=True, exist_ok=True)
  lines = list(header)
  if "mixers" in results:
    lines += ["", *mixers_section(results["mixers"])]
    _plot_grid(results["mixers"]["us_per_token"], out / "mixers_fwd_bwd.png", "T",
               "microseconds per token", "fwd+bwd time per token")
  if "decode" in results:
    lines += ["", *decode_section(results["decode"])]
    _plot_grid(results["decode"]["us_per_step"], out / "decode_step.png", "context",
               "microseconds per step", "decode step time")
  if "train" in results:
    lines += ["", *train_section(results["train"])]
    _plot_mfu(results["train"], out / "train_mfu.png")
  (out / "results.md").write_text("\n".join(lines) + "\n")
  (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
  return out / "results.md"
