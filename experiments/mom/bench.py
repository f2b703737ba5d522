"""The cost of E memories: MoM vs Gated DeltaNet, microseconds per token of a jitted forward +
backward (training) and of one decode step, one layer at equal d_model and heads. Writes
experiments/mom/results.md.

  python experiments/mom/bench.py            # the study (quiet machine)
  python experiments/mom/bench.py --tiny     # seconds-long smoke run

Rows: gated_deltanet; mom in the masked form (every memory runs over every token, the default)
and the gathered form (each memory runs over its own tokens only, plus a sort and two gathers),
both with the paper's defaults (4 memories, top-2, shared memory). Timing and the machine line
come from experiments/bench_linear/bench.py.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from memzoo.models.layers import registry  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "bench_linear", HERE.parent / "bench_linear" / "bench.py")
bench_linear = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_linear)

LAYERS = {  # table row -> (registered mixer, its options)
    "gated_deltanet": ("gated_deltanet", {}),
    "mom (masked)": ("mom", {"form": "masked"}),
    "mom (gathered)": ("mom", {"form": "gathered"}),
}


def decode_step(name, options, *, d_model, num_heads, dtype, batch):
  """A jitted `(params, x_t, state) -> (y_t, state)` of one mixer layer, its params and state."""
  model_cfg = {"d_model": d_model, "num_heads": num_heads, "dtype": dtype, name: options}
  layer = registry.build("mixer", name, model_cfg, rngs=nnx.Rngs(0))
  state = layer.init_state(batch, 1)
  graphdef, params = nnx.split(layer)
  step = jax.jit(lambda params, x_t, state: nnx.merge(graphdef, params).step(x_t, state))
  return step, params, state


def rows(a):
  """{row: {column: microseconds per token}}; columns `T=<length>` (fwd+bwd) and `decode`."""
  results = {}
  for row, (name, options) in LAYERS.items():
    results[row] = {}
    for length in a.lengths:
      fn, params = bench_linear.layer_fwd_bwd(name, options, d_model=a.d_model,
                                              num_heads=a.num_heads, dtype=a.dtype)
      keys = jax.random.split(jax.random.key(length), 2)
      x = jax.random.normal(keys[0], (a.batch, length, a.d_model), a.dtype)
      cotangent = jax.random.normal(keys[1], x.shape, jnp.float32)
      seconds = bench_linear.time_call(fn, params, x, cotangent, repeats=a.repeats)
      results[row][f"T={length}"] = 1e6 * seconds / (a.batch * length)
    step, params, state = decode_step(name, options, d_model=a.d_model, num_heads=a.num_heads,
                                      dtype=a.dtype, batch=a.batch)
    x_t = jax.random.normal(jax.random.key(0), (a.batch, a.d_model), a.dtype)
    seconds = bench_linear.time_call(step, params, x_t, state, repeats=a.repeats)
    results[row]["decode"] = 1e6 * seconds / a.batch
    print(row, {k: round(v, 3) for k, v in results[row].items()}, flush=True)
  return results


def table(results) -> list[str]:
  columns = list(next(iter(results.values())))
  base = results["gated_deltanet"]
  lines = ["| layer | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for row, cells in results.items():
    lines.append(f"| {row} | " + " | ".join(
        f"{cells[c]:.3f} ({cells[c] / base[c]:.2f}x)" for c in columns) + " |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="512,2048,8192")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--d_model", type=int, default=384)
  parser.add_argument("--num_heads", type=int, default=6)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(HERE / "results.md"))
  parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, 1 repeat")
  a = parser.parse_args()
  if a.tiny:
    a.lengths, a.d_model, a.num_heads, a.repeats = "64", 32, 2, 1
  a.lengths = [int(t) for t in a.lengths.split(",")]
  a.dtype = jnp.dtype(a.dtype)

  machine = bench_linear.machine()
  print(f"Machine: {machine}", flush=True)
  results = rows(a)
  lines = [f"Machine: {machine}.", "", f"Command: `python {' '.join(sys.argv)}`.", "",
           f"## Microseconds per token (B={a.batch}, d_model {a.d_model}, {a.num_heads} heads, "
           f"{a.dtype}, median of {a.repeats}; in brackets: / gated_deltanet)", "",
           "`T=<length>`: forward + backward of one layer; `decode`: one `step`.", "",
           *table(results)]
  Path(a.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
