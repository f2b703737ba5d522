"""Linear-recurrent layers vs softmax attention: fwd+bwd time per token as the sequence grows, and
retention against torchscale's MultiScaleRetention. Writes experiments/bench_linear/results.md.

  python experiments/bench_linear/bench.py                       # the full study (quiet machine)
  python experiments/bench_linear/bench.py --tiny                # seconds-long smoke run

Each cell is the median over `--repeats` timed calls (after a compile call and a warm-up call) of a
jitted forward + backward (gradients of the parameters and the input) of one mixer layer, divided
by the tokens in the batch. A layer whose call takes longer than `--max_seconds` is not run at
longer lengths. torchscale is timed in this process when torch and torchscale import, else under
`--torch_python` (an interpreter that has them), else skipped.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers import registry
from memzoo.train import distributed

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


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  if Path("/proc/cpuinfo").exists():
    models = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
              if l.startswith("model name")]
    cpu = models[0] if models else cpu
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (f"{cpu}; {os.cpu_count()} cores; {memory:.0f} GiB RAM; {platform.platform()}; "
          f"python {platform.python_version()}; jax {jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} x {devices})")


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


def time_call(fn, *args, repeats):
  """Median wall seconds of `fn(*args)` after a compile call and a warm-up call."""
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    runs.append(time.perf_counter() - t0)
  return statistics.median(runs)


def scaling(a) -> dict:
  """{row: {length: microseconds per token, or a string saying why there is none}}."""
  results = {}
  for row in a.layers:
    name, options = LAYERS[row]
    results[row], stop = {}, None
    for length in a.lengths:
      if stop:
        results[row][length] = stop
        continue
      try:
        fn, params = layer_fwd_bwd(name, options, d_model=a.d_model, num_heads=a.num_heads,
                                   dtype=a.dtype)
        keys = jax.random.split(jax.random.key(length), 2)
        x = jax.random.normal(keys[0], (a.batch, length, a.d_model), a.dtype)
        cotangent = jax.random.normal(keys[1], x.shape, jnp.float32)
        seconds = time_call(fn, params, x, cotangent, repeats=a.repeats)
      except Exception as e:  # noqa: BLE001  (out of memory, or an impl that has not landed)
        results[row][length] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        stop = "skipped (failed at a shorter T)"
        continue
      results[row][length] = 1e6 * seconds / (a.batch * length)
      if seconds > a.max_seconds:
        stop = f"skipped (> {a.max_seconds:g} s at a shorter T)"
      print(f"{row:20s} T={length:6d} {results[row][length]:10.3f} us/token", flush=True)
  return results


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
  proc = subprocess.run(command, capture_output=True, text=True)
  if proc.returncode:
    return f"failed: {proc.stderr.strip().splitlines()[-1]}"
  return json.loads(proc.stdout.strip().splitlines()[-1])


def versus_torchscale(a) -> list[str]:
  fn, params = layer_fwd_bwd("retention", {}, d_model=a.d_model, num_heads=a.num_heads,
                             dtype=a.dtype)
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (a.ts_batch, a.ts_length, a.d_model), a.dtype)
  ours = time_call(fn, params, x, jax.random.normal(keys[1], x.shape), repeats=a.repeats)
  theirs = torchscale(a)
  head = (f"Retention fwd+bwd, d_model {a.d_model}, value dim {2 * a.d_model}, {a.num_heads} heads,"
          f" B{a.ts_batch} x T{a.ts_length}:")
  lines = [head, "", "| implementation | seconds (median) |", "|---|---|",
           f"| memzoo retention (chunk form, chunk 64, {a.dtype}) | {ours:.4f} |"]
  if isinstance(theirs, dict):
    precision = "bf16 autocast" if theirs["dtype"] == "bfloat16" else "float32"
    lines += [f"| torchscale MultiScaleRetention (chunkwise, chunk {theirs['chunk_size']}, "
              f"{precision}; torch {theirs['torch']}, {theirs['threads']} threads) | "
              f"{theirs['seconds']:.4f} |", "", f"Speed-up: {theirs['seconds'] / ours:.2f}x."]
  else:
    lines += ["", f"torchscale: {theirs}."]
  return lines


def table(results, lengths) -> list[str]:
  cell = lambda v: f"{v:.3f}" if isinstance(v, float) else v
  lines = ["| layer | " + " | ".join(f"T={t}" for t in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  for row, cells in results.items():
    lines.append(f"| {row} | " + " | ".join(cell(cells[t]) for t in lengths) + " |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
  parser.add_argument("--layers", default=",".join(LAYERS), help=f"from {list(LAYERS)}")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--d_model", type=int, default=384)
  parser.add_argument("--num_heads", type=int, default=6)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_seconds", type=float, default=60.0)
  parser.add_argument("--ts_batch", type=int, default=2)
  parser.add_argument("--ts_length", type=int, default=1024)
  parser.add_argument("--ts_chunk_size", type=int, default=512, help="torchscale's default")
  parser.add_argument("--torch_python", default=None, help="interpreter with torch + torchscale")
  parser.add_argument("--out", default=str(HERE / "results.md"))
  parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, 1 repeat")
  a = parser.parse_args()
  distributed.apply_cpu_flags()  # what memzoo-train runs with
  if a.tiny:
    a.lengths, a.d_model, a.num_heads, a.repeats = "64,128", 32, 2, 1
    a.ts_batch, a.ts_length, a.ts_chunk_size = 1, 64, 32
  a.lengths = [int(t) for t in a.lengths.split(",")]
  a.layers = a.layers.split(",")
  unknown = sorted(set(a.layers) - set(LAYERS))
  if unknown:
    parser.error(f"--layers: unknown {unknown}; choose from {list(LAYERS)}")
  a.dtype = jnp.dtype(a.dtype)

  print(f"Machine: {machine()}", flush=True)
  results = scaling(a)
  lines = [f"Machine: {machine()}.", "", f"Command: `python {' '.join(sys.argv)}`.", "",
           f"## fwd+bwd microseconds per token (B={a.batch}, d_model {a.d_model}, {a.num_heads} "
           f"heads, {a.dtype}, median of {a.repeats})", "", *table(results, a.lengths), "",
           "Crossover:", "", *crossover(results, a.lengths), "",
           "## Retention vs torchscale", "", *versus_torchscale(a)]
  Path(a.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
