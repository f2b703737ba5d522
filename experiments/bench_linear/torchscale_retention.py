"""fwd+bwd time of torchscale's MultiScaleRetention (chunkwise form), the reference for bench.py.

Needs torch and torchscale only (no JAX), so bench.py can run it under another interpreter:

  /work/peers-venv/bin/python experiments/bench_linear/torchscale_retention.py --length 1024

prints one JSON line: {"seconds": median, "runs": [...], "torch": version, "threads": n}.
"""

import argparse
import json
import statistics
import time


def time_torchscale(batch, length, d_model, value_dim, num_heads, repeats, chunk_size=512,
                    warmup=2, dtype="float32"):
  """Median seconds of one forward + backward (grads of params and input) at `[batch, length]`.

  `dtype` "bfloat16" runs the forward under `torch.autocast` (float32 parameters, bf16 matmuls),
  the counterpart of a memzoo layer with `dtype=bfloat16`."""
  import torch
  from torchscale.architecture.config import RetNetConfig
  from torchscale.architecture.retnet import RetNetRelPos
  from torchscale.component.multiscale_retention import MultiScaleRetention

  torch.manual_seed(0)
  args = RetNetConfig(decoder_embed_dim=d_model, decoder_value_embed_dim=value_dim,
                      decoder_retention_heads=num_heads, recurrent_chunk_size=chunk_size)
  layer = MultiScaleRetention(args, d_model, value_dim, num_heads)
  # The relative-position tables are built once per model call and shared by every layer, so they
  # stay outside the timed region (this favours torchscale).
  rel_pos = RetNetRelPos(args)(length, chunkwise_recurrent=True)
  x = torch.randn(batch, length, d_model, requires_grad=True)
  cotangent = torch.randn(batch, length, d_model)

  def fwd_bwd():
    for p in (x, *layer.parameters()):
      p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      y = layer(x, rel_pos, chunkwise_recurrent=True)
    (y.float() * cotangent).sum().backward()

  runs = []
  for i in range(warmup + repeats):
    t0 = time.perf_counter()
    fwd_bwd()
    if i >= warmup:
      runs.append(time.perf_counter() - t0)
  return {"seconds": statistics.median(runs), "runs": runs, "torch": torch.__version__,
          "threads": torch.get_num_threads(), "chunk_size": args.recurrent_chunk_size,
          "dtype": dtype}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--d_model", type=int, default=384)
  parser.add_argument("--value_dim", type=int, default=768)
  parser.add_argument("--num_heads", type=int, default=6)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--chunk_size", type=int, default=512, help="torchscale's default")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  a = parser.parse_args()
  print(json.dumps(time_torchscale(a.batch, a.length, a.d_model, a.value_dim, a.num_heads,
                                   a.repeats, a.chunk_size, dtype=a.dtype)))


if __name__ == "__main__":
  main()
