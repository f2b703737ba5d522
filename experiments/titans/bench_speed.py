"""Speed of one Titans memory layer, forward + backward: memzoo's LMM vs titans-pytorch's
`NeuralMemory(dim, chunk_size)` (lucidrains), side by side in one process.

Both sides: one head of width `dim`, a 2-layer MLP memory with expansion 4, momentum and decay on,
and `chunk_size` tokens per chunk. titans-pytorch takes every gradient at the incoming weights
(`batch_size=None`), memzoo moves the gradient point every chunk (the paper's mini-batch rule).
The loss is `sum(y * c)` for a fixed random `c`; gradients flow to the input and all parameters.
The torch side is skipped when torch or titans_pytorch is not importable. The last column gives
the matmul FLOPs of one forward call of each (memzoo's analytic count, titans-pytorch's counted by
torch.utils.flop_counter), from which the table's times give each side's FLOP rate.

  python experiments/titans/bench_speed.py                 # B2 x T1024, dim 384, chunk 64
  python experiments/titans/bench_speed.py --tiny          # smoke test on tiny sizes
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from memzoo.models.layers.neural_memory import NeuralMemory  # noqa: E402
from memzoo.train import distributed, huge_pages  # noqa: E402


def timed(fn, runs: int, warmup: int) -> tuple[float, list[float]]:
  """(seconds of the first call, seconds of each of `runs` calls after `warmup` more)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, times


def memzoo_case(args):
  layer = NeuralMemory(args.dim, 1, chunk_size=args.chunk, depth=2, expansion=4.0,
                       dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (args.batch, args.seq, args.dim), args.dtype)
  cot = jax.random.normal(jax.random.key(2), x.shape, jnp.float32)

  @nnx.jit
  def fwd_bwd(layer, x):
    def loss(layer, x):
      return jnp.sum(layer(x).astype(jnp.float32) * cot)
    return nnx.grad(loss, argnums=(0, 1))(layer, x)

  run = lambda: jax.block_until_ready(fwd_bwd(layer, x))
  return run, str(jax.devices()[0]), layer.flops(args.batch, args.seq)


def torch_case(args):
  try:
    import torch
    from titans_pytorch import NeuralMemory as TorchNeuralMemory
  except ImportError as e:
    return None, f"skipped ({e})", None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  torch.manual_seed(0)
  memory = TorchNeuralMemory(dim=args.dim, chunk_size=args.chunk).to(device)
  x = torch.randn(args.batch, args.seq, args.dim, device=device, requires_grad=True)
  cot = torch.randn(args.batch, args.seq, args.dim, device=device)

  def fwd_bwd():
    memory.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
      y, _ = memory(x)
    (y.float() * cot).sum().backward()
    if device == "cuda":
      torch.cuda.synchronize()

  from torch.utils.flop_counter import FlopCounterMode
  with FlopCounterMode(display=False) as counter:  # matmul FLOPs of one forward
    memory(x)
  return fwd_bwd, device, counter.get_total_flops()


def main():
  huge_pages.exec_with_huge_pages()  # as memzoo-train runs; torch shares the process
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq", type=int, default=1024)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--tiny", action="store_true", help="B1 x T32, dim 16, chunk 8, 2 runs")
  args = parser.parse_args()
  distributed.apply_cpu_flags()  # what memzoo-train runs with
  if args.tiny:
    args.batch, args.seq, args.dim, args.chunk, args.runs, args.warmup = 1, 32, 16, 8, 2, 1

  print(f"fwd+bwd, B{args.batch} x T{args.seq}, dim {args.dim}, chunk {args.chunk}, {args.dtype}, "
        f"median of {args.runs} runs after {args.warmup} warm-up")
  print(f"{'implementation':<34} {'device':<16} {'first call s':>12} {'median ms':>10} "
        f"{'min ms':>8} {'fwd GFLOP':>10}")
  for name, case in (("memzoo lmm (jax)", memzoo_case),
                     ("titans-pytorch NeuralMemory", torch_case)):
    fn, device, flops = case(args)
    if fn is None:
      print(f"{name:<34} {device}")
      continue
    first, times = timed(fn, args.runs, args.warmup)
    print(f"{name:<34} {device:<16} {first:>12.2f} {1e3 * statistics.median(times):>10.1f} "
          f"{1e3 * min(times):>8.1f} {flops / 1e9:>10.2f}")
  print("fwd GFLOP: matmul FLOPs of one forward call; memzoo's analytic (`NeuralMemory.flops`), "
        "titans-pytorch's counted by torch.utils.flop_counter.")


if __name__ == "__main__":
  main()
