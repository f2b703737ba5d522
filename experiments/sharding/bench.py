"""Sharding study on 8 simulated CPU devices: compile time vs depth (scan_layers on/off), per-device
memory per mesh, and tokens/s per mesh. CPU devices share two cores, so only ratios mean anything.

  python experiments/sharding/bench.py            # writes experiments/sharding/results.md
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from memzoo.train import report_setup, trainer  # noqa: E402
from memzoo.train.config import base_config  # noqa: E402

OUT = Path(__file__).with_name("results.md")
MESHES = {"data=8": dict(data=8), "data=2 fsdp=4": dict(data=2, fsdp=4),
          "data=2 fsdp=2 tensor=2": dict(data=2, fsdp=2, tensor=2), "fsdp=8": dict(data=1, fsdp=8),
          "data=2 tensor=4": dict(data=2, tensor=4)}


def config(num_layers=4, scan=False, mesh=None):
  c = base_config()
  c.data.seq_len = 128
  c.model.update(d_model=256, num_heads=8, num_layers=num_layers, scan_layers=scan)
  c.train.update(batch_size=16, steps=10**6, eval_every=10**6, checkpoint_every=10**6)
  c.mesh.update(mesh or dict(data=8))
  return c


def setup_timed(c):
  t0 = time.perf_counter()
  run = trainer.setup(c, tempfile.mkdtemp())
  return run, time.perf_counter() - t0


def compile_times():
  rows = []
  for depth in (2, 4, 8, 16, 32):
    cells = []
    for scan in (False, True):
      run, seconds = setup_timed(config(num_layers=depth, scan=scan))
      run.checkpoints.close()
      cells.append(seconds)
    rows.append(f"| {depth} | {cells[0]:.1f} | {cells[1]:.1f} |")
  return ["| layers | setup + compile, loop (s) | setup + compile, scan (s) |", "|---|---|---|",
          *rows]


def meshes(steps=10, repeats=3):
  rows = []
  for name, mesh in MESHES.items():
    run, _ = setup_timed(config(mesh=mesh))
    memory = run.train_step.memory_analysis()
    state, rates = run.state, []
    with run.context():
      batches = [run.to_global(next(run.data)) for _ in range(steps)]
      state, metrics = run.train_step(state, batches[0])  # warm up
      jax.block_until_ready(metrics)
      for _ in range(repeats):
        t0 = time.perf_counter()
        for batch in batches:
          state, metrics = run.train_step(state, batch)
        jax.block_until_ready(metrics)
        rates.append(steps * 16 * 128 / (time.perf_counter() - t0))
    run.checkpoints.close()
    params = report_setup.per_device_bytes(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params))
    opt = report_setup.per_device_bytes(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.opt_state))
    rows.append(f"| {name} | {params / 2**20:.2f} | {opt / 2**20:.2f} | "
                f"{memory.temp_size_in_bytes / 2**20:.1f} | {statistics.median(rates):,.0f} |")
  return ["| mesh | params MiB/device | optimizer MiB/device | step temporaries MiB/device | "
          "tokens/s (median of 3) |", "|---|---|---|---|---|", *rows]


def main():
  machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"jax {jax.__version__}, {jax.device_count()} simulated CPU devices")
  lines = [f"Machine: {machine}. Command: `python {' '.join(sys.argv)}`.", "",
           "Model: d_model 256, 8 heads, attention, seq 128, batch 16 (global).", "",
           "## Compile time vs depth", "", *compile_times(), "",
           "## Memory and throughput per mesh (4 layers)", "", *meshes()]
  OUT.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
