"""Linear-recurrent layers vs softmax attention: fwd+bwd time per token as the sequence grows, and
retention against torchscale's MultiScaleRetention. Writes experiments/bench_linear/results.md.

  python experiments/bench_linear/bench.py                       # the full study (quiet machine)
  python experiments/bench_linear/bench.py --tiny                # seconds-long smoke run

A cell is a jitted forward + backward (gradients of the parameters and the input) of one mixer
layer, timed as the median of `--repeats` calls, or of as many as fill `--min_seconds` (1 s) when
the call is short, and divided by the tokens in the batch. The cells
are timed in `--rounds` passes over the whole table (compiled in the first), and a cell's value is
the median over the passes: on a shared host the per-token cost of one cell moves 5-20% between
processes and minutes, and the rounds spread that drift over every cell instead of one row. A layer
whose call takes longer than `--max_seconds` is not run at longer lengths. memzoo's and torchscale's
retention alternate, one call of the torchscale script per round. torchscale is timed in this
process when torch and torchscale import, else under `--torch_python` (an interpreter that has
them; `--torch_small_pages` runs it without memzoo's huge-page tunable), else skipped.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.bench.timing import machine, time_call
from memzoo.models.layers import registry
from memzoo.train import distributed, huge_pages

HERE = Path(__file__).parent
LAYERS = {  # table row -> (registered mixer, its options)
    "retention": ("retention", {}),
    "linear_attention": ("linear_attention", {}),
    "gla": ("gla", {}),
    "deltanet": ("deltanet", {}),
    "gated_deltanet": ("gated_deltanet", {}),
    "attention_naive": ("attention", {"impl": "naive"}),
    "attention_blockwise": ("attention", {"impl": "blockwise"}),
}
LINEAR = ("retention", "linear_attention", "gla", "deltanet", "gated_deltanet")
ATTENTION = ("attention_naive", "attention_blockwise")


def layer_fwd_bwd(name, options, *, d_model, num_heads, dtype):
  """A jitted `(params, x, cotangent) -> grads` of one mixer layer, and its params."""
  model_cfg = {"d_model": d_model, "num_heads": num_heads, "dtype": dtype, name: options}
  layer = registry.build("mixer", name, model_cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)

  @jax.jit
  def fwd_bwd(params, x, cotangent):
    def loss(params, x):
      y = nnx.merge(graphdef, params)(x)
      return jnp.sum(y.astype(jnp.float32) * cotangent)
    return jax.grad(loss, argnums=(0, 1))(params, x)

  return fwd_bwd, params


def build_cell(row, length, a):
  """`(fwd_bwd, params, x, cotangent)` of one table cell."""
  name, options = LAYERS[row]
  fn, params = layer_fwd_bwd(name, options, d_model=a.d_model, num_heads=a.num_heads,
                             dtype=a.dtype)
  keys = jax.random.split(jax.random.key(length), 2)
  x = jax.random.normal(keys[0], (a.batch, length, a.d_model), a.dtype)
  return fn, params, x, jax.random.normal(keys[1], x.shape, jnp.float32)


def scaling(a) -> tuple[dict, dict]:
  """`({row: {length: median us/token, or why there is none}}, {row: {length: [us/token of each
  round]}})`.

  The cells are timed in `a.rounds` rounds, each visiting every cell once (compiled in the first
  round), so that a drift of the machine reaches every cell alike; a cell's value is the median
  over rounds of its per-round medians.
  """
  results = {row: {} for row in a.layers}
  rounds = {row: {} for row in a.layers}
  cells, stopped = {}, {}
  for r in range(a.rounds):
    for row in a.layers:
      for length in a.lengths:
        if r == 0 and row in stopped:
          results[row][length] = stopped[row]
          continue
        if r > 0 and (row, length) not in cells:  # not run in the first round
          continue
        try:
          if r == 0:
            cells[row, length] = build_cell(row, length, a)
          seconds = time_call(*cells[row, length], repeats=a.repeats,
                              warmup=2 if r == 0 else 1, min_seconds=a.min_seconds).wall
        except Exception as e:  # noqa: BLE001  (out of memory, or an impl that has not landed)
          results[row][length] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
          stopped[row] = "skipped (failed at a shorter T)"
          cells.pop((row, length), None)
          continue
        rounds[row].setdefault(length, []).append(1e6 * seconds / (a.batch * length))
        if seconds > a.max_seconds:
          stopped[row] = f"skipped (> {a.max_seconds:g} s at a shorter T)"
        print(f"round {r + 1} {row:20s} T={length:6d} {rounds[row][length][-1]:10.3f} us/token",
              flush=True)
  for row in a.layers:
    for length, values in rounds[row].items():
      results[row][length] = statistics.median(values)
  return results, rounds


def flatness(results, rounds, lengths, start) -> list[str]:
  """Per linear layer: the change of the per-token cost from T=`start` (the shortest length if
  `start` was not run) to the longest T, of the medians, within each round, and between the two
  cells' fastest rounds (a shared host only ever adds time, so the minimum is the least disturbed
  reading; the target is judged on the medians)."""
  first, last = (start if start in lengths else lengths[0]), lengths[-1]
  lines = []
  for row in (r for r in results if r in LINEAR):
    if not all(isinstance(results[row].get(t), float) for t in (first, last)):
      continue
    change = results[row][last] / results[row][first] - 1
    per_round = [b / a - 1 for a, b in zip(rounds[row][first], rounds[row][last])]
    fastest = min(rounds[row][last]) / min(rounds[row][first]) - 1
    lines.append(f"- {row}: {100 * change:+.0f}% from T={first} to T={last} (rounds: "
                 + ", ".join(f"{100 * c:+.0f}%" for c in per_round)
                 + f"; fastest rounds: {100 * fastest:+.0f}%)")
  return lines


def crossover(results, lengths) -> list[str]:
  """Per linear layer: the length from which on it beats every attention row that ran there
  (lengths where no attention row ran are not compared)."""
  if not any(r in ATTENTION for r in results):
    return ["- no attention row in this run (`--layers`): no crossover"]
  lines = []
  for row in (r for r in results if r in LINEAR):
    first = None
    for length in lengths:
      ours = results[row][length]
      rivals = [v for r in results if r in ATTENTION
                for v in [results[r][length]] if isinstance(v, float)]
      if not rivals:  # attention stopped at a shorter length: nothing to compare here
        continue
      faster = isinstance(ours, float) and all(ours < v for v in rivals)
      first = (first or length) if faster else None
    lines.append(f"- {row}: " + (f"faster than attention from T = {first} on" if first else
                                 "not faster than attention at the longest length"))
  return lines


def torchscale(a) -> dict | str:
  """torchscale's fwd+bwd seconds (see torchscale_retention.py), or why it was skipped."""
  kwargs = dict(batch=a.ts_batch, length=a.ts_length, d_model=a.d_model, value_dim=2 * a.d_model,
                num_heads=a.num_heads, repeats=a.repeats, chunk_size=a.ts_chunk_size,
                dtype=a.dtype.name)
  try:
    sys.path.insert(0, str(HERE))
    from torchscale_retention import time_torchscale
    return time_torchscale(**kwargs)
  except ImportError as e:
    if not a.torch_python:
      return f"skipped ({e}; pass --torch_python)"
  command = [a.torch_python, str(HERE / "torchscale_retention.py")]
  command += [f"--{k}={v}" for k, v in kwargs.items()]
  env = dict(os.environ)
  if a.torch_small_pages:  # 4 KiB pages: torchscale's faster setting on the AMD host
    env["GLIBC_TUNABLES"] = huge_pages.tunables_without_huge_pages(env)
  proc = subprocess.run(command, capture_output=True, text=True, env=env)
  if proc.returncode:
    return f"failed: {proc.stderr.strip().splitlines()[-1]}"
  return json.loads(proc.stdout.strip().splitlines()[-1])


def versus_torchscale(a) -> list[str]:
  """memzoo's retention and torchscale's, alternating for `a.rounds` rounds."""
  fn, params = layer_fwd_bwd("retention", {}, d_model=a.d_model, num_heads=a.num_heads,
                             dtype=a.dtype)
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (a.ts_batch, a.ts_length, a.d_model), a.dtype)
  cotangent = jax.random.normal(keys[1], x.shape)
  ours, theirs = [], []
  for r in range(a.rounds):
    ours.append(time_call(fn, params, x, cotangent, repeats=a.repeats,
                          warmup=2 if r == 0 else 1).wall)
    theirs.append(torchscale(a))
    if not isinstance(theirs[-1], dict):
      break
  head = (f"Retention fwd+bwd, d_model {a.d_model}, value dim {2 * a.d_model}, {a.num_heads} heads,"
          f" B{a.ts_batch} x T{a.ts_length}, {len(ours)} alternating round(s), median of "
          f"{a.repeats} calls each:")
  seconds = lambda values: " / ".join(f"{v:.4f}" for v in values)
  chunk = registry.lookup("mixer", "retention").default_chunk_size()  # the layer's, options {}
  lines = [head, "", "| implementation | seconds per round | median |", "|---|---|---|",
           f"| memzoo retention (chunk form, chunk {chunk}, {a.dtype}) | {seconds(ours)} | "
           f"{statistics.median(ours):.4f} |"]
  if not isinstance(theirs[-1], dict):
    return lines + ["", f"torchscale: {theirs[-1]}."]
  ts = [t["seconds"] for t in theirs]
  info = theirs[0]
  precision = "bf16 autocast" if info["dtype"] == "bfloat16" else "float32"
  ratios = [t / o for o, t in zip(ours, ts)]
  return lines + [
      f"| torchscale MultiScaleRetention (chunkwise, chunk {info['chunk_size']}, {precision}; "
      f"torch {info['torch']}, {info['threads']} threads"
      f"{', 4 KiB pages' if a.torch_small_pages else ''}) | {seconds(ts)} | "
      f"{statistics.median(ts):.4f} |", "",
      f"Speed-up: {statistics.median(ts) / statistics.median(ours):.2f}x (per round: "
      + ", ".join(f"{r:.2f}x" for r in ratios) + ")."]


def table(results, lengths) -> list[str]:
  cell = lambda v: f"{v:.3f}" if isinstance(v, float) else v
  lines = ["| layer | " + " | ".join(f"T={t}" for t in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  for row, cells in results.items():
    lines.append(f"| {row} | " + " | ".join(cell(cells[t]) for t in lengths) + " |")
  return lines


def main():
  huge_pages.exec_with_huge_pages()  # as memzoo-train runs; torchscale inherits it
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
  parser.add_argument("--layers", default=",".join(LAYERS), help=f"from {list(LAYERS)}")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--d_model", type=int, default=384)
  parser.add_argument("--num_heads", type=int, default=6)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell and round")
  parser.add_argument("--rounds", type=int, default=3, help="passes over all cells (module doc)")
  parser.add_argument("--min_seconds", type=float, default=1.0,
                      help="per cell and round, time at least this long (more calls when short)")
  parser.add_argument("--flat_from", type=int, default=1024, help="start of the flatness span")
  parser.add_argument("--max_seconds", type=float, default=60.0)
  parser.add_argument("--ts_batch", type=int, default=2)
  parser.add_argument("--ts_length", type=int, default=1024)
  parser.add_argument("--ts_chunk_size", type=int, default=512, help="torchscale's default")
  parser.add_argument("--torch_python", default=None, help="interpreter with torch + torchscale")
  parser.add_argument("--torch_small_pages", action="store_true",
                      help="run the --torch_python subprocess without memzoo's huge-page tunable")
  parser.add_argument("--out", default=str(HERE / "results.md"))
  parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, 1 repeat")
  a = parser.parse_args()
  distributed.apply_cpu_flags()  # what memzoo-train runs with
  if a.tiny:
    a.lengths, a.d_model, a.num_heads, a.repeats, a.rounds = "64,128", 32, 2, 1, 2
    a.min_seconds = 0.0
    a.ts_batch, a.ts_length, a.ts_chunk_size = 1, 64, 32
  a.lengths = [int(t) for t in a.lengths.split(",")]
  a.layers = a.layers.split(",")
  unknown = sorted(set(a.layers) - set(LAYERS))
  if unknown:
    parser.error(f"--layers: unknown {unknown}; choose from {list(LAYERS)}")
  a.dtype = jnp.dtype(a.dtype)

  print(f"Machine: {machine()}", flush=True)
  results, rounds = scaling(a)
  lines = [f"Machine: {machine()}.", "", f"Command: `python {' '.join(sys.argv)}` "
           f"({time.strftime('%Y-%m-%d %H:%M')}).", "",
           f"## fwd+bwd microseconds per token (B={a.batch}, d_model {a.d_model}, {a.num_heads} "
           f"heads, {a.dtype}, median over {a.rounds} rounds of the median of {a.repeats}+ calls "
           f"filling {a.min_seconds:g} s)", "",
           *table(results, a.lengths), "",
           "Change of the per-token cost with T (target: within 15% from 1K to 16K):", "",
           *flatness(results, rounds, a.lengths, a.flat_from), "",
           "Crossover:", "", *crossover(results, a.lengths), "",
           "## Retention vs torchscale", "", *versus_torchscale(a)]
  Path(a.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
