"""Ring attention benchmark: memory per device, step time against `ringattention`, load balance.

  python experiments/ring/bench_ring.py --out experiments/ring/results.json

Runs on `--devices` CPU devices (forced with XLA_FLAGS before JAX starts). One "step" is the forward
and backward of causal self-attention alone (`jax.vjp` with a random cotangent). Three tables:

1. Peak memory per device vs T, from the compiled programs' memory analysis (arguments + outputs +
   temporaries): dense (`impl="naive"`) and blockwise on one device, ring on all of them.
2. Step time vs T: memzoo `ring_self_attention` against the `ringattention` package's
   `ring_attention` (lhao499/ringattention, `pip install ringattention`), same devices, shapes,
   block sizes, under the same `shard_map`. Skipped with a note when the package is missing.
3. Causal load balance: memzoo ring step time with and without the zigzag reordering.
"""

import argparse
import functools
import importlib.util
import inspect
import json
import os
import statistics
import sys
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--lengths", default="2048,4096,8192,16384", help="comma-separated T")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=512, help="block_q = block_k (chunk sizes)")
  parser.add_argument("--repeats", type=int, default=5, help="timed steps (after one warm-up)")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  return parser.parse_args()


ARGS = parse_args()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={ARGS.devices}")

import jax  # noqa: E402  (the device count is fixed when JAX starts)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from memzoo.models.ops.attention import attention  # noqa: E402
from memzoo.models.ops.ring_attention import ring_self_attention  # noqa: E402

AXIS = "sequence"


def inputs(t):
  rng = np.random.default_rng(0)
  shape = (ARGS.batch, t, ARGS.heads, ARGS.head_dim)
  return [jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(4)]


def step_fn(attend):
  """`(q, k, v, cotangent) -> (out, dq, dk, dv)` for an attention function of (q, k, v)."""
  def step(q, k, v, cotangent):
    out, vjp = jax.vjp(attend, q, k, v)
    return (out,) + vjp(cotangent)
  return jax.jit(step)


def memzoo_ring(load_balance, block):
  return step_fn(functools.partial(ring_self_attention, causal=True, load_balance=load_balance,
                                   block_q=block, block_k=block))


def load_package_ring():
  """`ringattention/ringattention_jax.py` of the `ringattention` package, or None if missing.

  The file is loaded on its own: the package's `__init__` calls `jax.lib.xla_bridge`, which newer
  JAX releases no longer have.
  """
  spec = importlib.util.find_spec("ringattention")
  if spec is None:
    print("ringattention is not installed (`pip install ringattention`); skipping the comparison")
    return None
  path = os.path.join(spec.submodule_search_locations[0], "ringattention_jax.py")
  file_spec = importlib.util.spec_from_file_location("ringattention_jax", path)
  module = importlib.util.module_from_spec(file_spec)
  file_spec.loader.exec_module(module)
  return module


def package_ring(module, block):
  """The package's JAX `ring_attention`, causal, under the same `shard_map` as ours."""
  blockwise_kwargs = dict(causal_block_size=1, query_chunk_size=block, key_chunk_size=block,
                          deterministic=True, dropout_rng=None, attn_pdrop=0.0,
                          dtype=jnp.float32, precision=None, prevent_cse=True,
                          policy=jax.checkpoint_policies.nothing_saveable)
  if "attention_order" in inspect.signature(module._blockwise_attention_fwd).parameters:
    blockwise_kwargs["attention_order"] = "standard"  # newer releases take the order explicitly

  def local(q, k, v):
    return module.ring_attention(q, k, v, None, None, None, AXIS, True, blockwise_kwargs)

  spec = P(None, AXIS)
  return step_fn(jax.shard_map(local, in_specs=spec, out_specs=spec, check_vma=False))


def time_step(step, args):
  jax.block_until_ready(step(*args))  # compile and warm up
  times = []
  for _ in range(ARGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_bytes(step, args):
  stats = step.lower(*args).compile().memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes -
          stats.alias_size_in_bytes)


def table(title, header, rows):
  print(f"\n### {title}\n")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")


def main():
  lengths = [int(t) for t in ARGS.lengths.split(",")]
  mesh = jax.make_mesh((ARGS.devices,), (AXIS,))
  dense = step_fn(functools.partial(attention, impl="naive"))
  package = load_package_ring()
  results = {"args": vars(ARGS), "devices": str(jax.devices()[0].device_kind), "rows": []}
  mib = lambda b: round(b / 2 ** 20, 2)
  ms = lambda s: None if s is None else round(1e3 * s, 2)
  for t in lengths:
    # The same blocks everywhere; at most half a zigzag shard, so the two halves never share one.
    block = min(ARGS.block, t // (2 * ARGS.devices))
    blockwise = step_fn(functools.partial(attention, impl="blockwise", block_q=block,
                                          block_k=block))
    balanced, contiguous = memzoo_ring(True, block), memzoo_ring(False, block)
    theirs = package_ring(package, block) if package else None
    args = inputs(t)
    row = {"T": t, "block": block, "dense_mib": mib(peak_bytes(dense, args)),
           "blockwise_mib": mib(peak_bytes(blockwise, args))}
    with jax.set_mesh(mesh):
      sharded = [jax.device_put(a, P(None, AXIS)) for a in args]  # each device holds its slice
      row["ring_mib"] = mib(peak_bytes(balanced, sharded))
      row["ring_ms"] = ms(time_step(balanced, sharded))
      row["ring_contiguous_ms"] = ms(time_step(contiguous, sharded))
      row["ringattention_ms"] = ms(time_step(theirs, sharded)) if theirs else None
      if theirs:  # both compute the same thing (outputs and gradients)
        for ours, other in zip(balanced(*sharded), theirs(*sharded)):
          np.testing.assert_allclose(ours, other, rtol=1e-4, atol=1e-4)
    results["rows"].append(row)
    print(row, flush=True)

  rows = results["rows"]
  table("Peak memory per device (MiB), causal fwd+bwd",
        ["T", "dense, 1 device", "blockwise, 1 device", f"ring, {ARGS.devices} devices"],
        [(r["T"], r["dense_mib"], r["blockwise_mib"], r["ring_mib"]) for r in rows])
  table(f"Step time (ms), causal fwd+bwd on {ARGS.devices} devices",
        ["T", "memzoo ring", "ringattention"],
        [(r["T"], r["ring_ms"], r["ringattention_ms"]) for r in rows])
  table("Causal load balance (ms)", ["T", "zigzag", "contiguous", "speed-up"],
        [(r["T"], r["ring_ms"], r["ring_contiguous_ms"],
          round(r["ring_contiguous_ms"] / r["ring_ms"], 2)) for r in rows])
  if ARGS.out:
    with open(ARGS.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
