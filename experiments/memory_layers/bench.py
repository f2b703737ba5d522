"""Study (1): time and memory of a product-key memory layer vs a dense SwiGLU MLP of equal FLOPs.

Each layer is jitted as a forward pass and as a training step (gradients wrt parameters and input)
on `x [B, T, d]`. Reported per layer and mode: analytic FLOPs per token, XLA's FLOP count, the
compiled memory footprint (arguments + outputs + temporaries, from `memory_analysis()`), the
device's peak bytes in use (accelerators only; cumulative over the process, so run one layer per
process), and the median step time.

  python experiments/memory_layers/bench.py --layers pkm            # B8 x T512, d 512, 1M slots
  python experiments/memory_layers/bench.py --layers swiglu         # the equal-FLOPs dense MLP
  python experiments/memory_layers/bench.py --tiny                  # smoke test (any machine)
"""

import argparse
import json
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.experiments import equal_flops
from memzoo.models.layers import registry

warnings.filterwarnings("ignore", "Using 'Module.sow", DeprecationWarning)


def build_layers(args):
  """`{name: (layer, forward FLOPs per token)}` for the requested layers; the SwiGLU's width
  matches the pkm's FLOPs."""
  d, dtype = args.d_model, jnp.dtype(args.dtype)
  memory = dict(n_keys=args.n_keys, heads=args.heads, topk=args.topk, k_dim=args.k_dim)
  cfg = {"d_model": d, "dtype": dtype, "pkm": memory, "peer": memory}
  cfg["mlp_dim"] = equal_flops.swiglu_width(equal_flops.ffn_flops_per_token(cfg, "pkm"), d)
  layers = {name: registry.build("ffn", name, cfg, rngs=nnx.Rngs(0)) for name in args.layers}
  return {name: (layer, layer.flops(1, 1)) for name, layer in layers.items()}


def measure(fn, inputs, iters, warmup):
  """Compiles `fn`, runs it `warmup + iters` times; returns stats (times in ms, sizes in bytes)."""
  compiled = jax.jit(fn).lower(*inputs).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  times = []
  for i in range(warmup + iters):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    if i >= warmup:
      times.append(1e3 * (time.perf_counter() - start))
  device_stats = jax.local_devices()[0].memory_stats() or {}
  return {"median_ms": statistics.median(times), "min_ms": min(times),
          "xla_flops": cost.get("flops"),
          "compiled_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                             + memory.temp_size_in_bytes),
          "temp_bytes": memory.temp_size_in_bytes,
          "device_peak_bytes": device_stats.get("peak_bytes_in_use")}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", default="pkm,swiglu", type=lambda s: s.split(","))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--d-model", type=int, default=512)
  parser.add_argument("--n-keys", type=int, default=1024)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--topk", type=int, default=32)
  parser.add_argument("--k-dim", type=int, default=512)
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (params are float32)")
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script runs")
  parser.add_argument("--out", help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  if args.tiny:
    args.batch, args.seq, args.d_model, args.n_keys, args.k_dim, args.topk = 2, 16, 32, 16, 16, 4
    args.iters, args.warmup = 2, 1

  x = jax.random.normal(jax.random.key(0), (args.batch, args.seq, args.d_model), args.dtype)
  cotangent = jax.random.normal(jax.random.key(1), x.shape, args.dtype)
  rows = []
  for name, (layer, flops) in build_layers(args).items():
    graphdef, params = nnx.split(layer)
    forward = lambda p, x: nnx.merge(graphdef, p)(x)
    loss = lambda p, x: jnp.sum((forward(p, x) * cotangent).astype(jnp.float32))
    n_params = sum(v.size for v in jax.tree.leaves(params))
    for mode, fn in (("forward", forward), ("train", jax.grad(loss, argnums=(0, 1)))):
      row = {"layer": name, "mode": mode, "params": n_params, "flops_per_token": flops,
             "tokens": args.batch * args.seq, "device": jax.devices()[0].device_kind,
             **measure(fn, (params, x), args.iters, args.warmup)}
      rows.append(row)
      print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return rows


if __name__ == "__main__":
  main()
