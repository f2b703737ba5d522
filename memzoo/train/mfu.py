"""Model FLOPs utilisation (MFU): the model's FLOPs per second over the peak of the hardware.

    mfu = train_flops(batch, seq_len) * steps / seconds / peak_flops_per_s(dtype)

`LanguageModel.train_flops` counts the model FLOPs (layers/base.py, FlopCounted). The peak is the
dense-matmul throughput of every device of the job in the compute dtype:

* accelerators with a known kind (`PEAK_TFLOPS`, vendor figures for dense bf16 / fp16 matmuls):
  the table;
* anything else (CPUs, float32, unknown kinds): measured once per machine and dtype as the best of
  a few large jitted matmuls on one device, accumulated in float32 as the layers do (`dense.dot`;
  on an AMX CPU bf16 runs ~4x float32 only that way), and cached in `<cache>/peak_flops.json`,
  where <cache> is `$MEMZOO_CACHE_DIR`, else `$XDG_CACHE_HOME/memzoo`, else `~/.cache/memzoo`.
  A CPU device uses all the cores of its host, so the job's CPU peak is the host's times the
  process count.

`memzoo-bench --suites peak` measures again and replaces the cached value (measure on a quiet
machine: a peak measured under load makes every later MFU too high).
"""

import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from memzoo.models.ops.dense import dot

# Dense (no sparsity) bf16 / fp16 matmul TFLOP/s per JAX device, first matching substring of
# `device.device_kind` wins. Sources: NVIDIA H100/H200/A100/B200/L4 datasheets; Google Cloud TPU
# system architecture pages (v2 and v3 expose each of a chip's two cores as a device).
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("L4", 121.0),
    ("TPU v6 lite", 918.0), ("TPU v5 lite", 197.0), ("TPU v5", 459.0), ("TPU v4", 275.0),
    ("TPU v3", 61.5), ("TPU v2", 22.5),
)
TABLE_DTYPES = ("bfloat16", "float16")
MEASURE_SIZE = {"cpu": 1024}  # matrix side of the measurement; 8192 on accelerators
# Cached peaks measured another way (before float32 accumulation) are measured again.
MEASURE_METHOD = "chain of dense.dot"


def cache_dir() -> Path:
  if os.environ.get("MEMZOO_CACHE_DIR"):
    return Path(os.environ["MEMZOO_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "memzoo"


def host_cpu() -> str:
  """`"<cpu model>, <n> cores"`: the cores this process may run on."""
  model = platform.processor() or platform.machine()
  cpuinfo = Path("/proc/cpuinfo")
  if cpuinfo.exists():
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")]
    model = names[0] if names else model
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{model}, {cores} cores"


def _device_key(dtype) -> str:
  device = jax.local_devices()[0]
  where = host_cpu() if device.platform == "cpu" else device.device_kind
  return f"{device.platform} | {where} | {jnp.dtype(dtype).name}"


def table_peak(device_kind: str, dtype) -> float | None:
  """Per-device FLOP/s from `PEAK_TFLOPS`, or None when the kind or the dtype is not in it."""
  if jnp.dtype(dtype).name not in TABLE_DTYPES:
    return None
  for name, tflops in PEAK_TFLOPS:
    if name in device_kind:
      return tflops * 1e12
  return None


def measure_peak(dtype, *, size: int | None = None, repeats: int = 3, matmuls: int = 4) -> float:
  """FLOP/s of one device: best of `repeats` timed calls (after a compile call) of a jitted chain
  of `matmuls` `[size, size] @ [size, size]` products in `dtype`."""
  device = jax.local_devices()[0]
  size = size or MEASURE_SIZE.get(device.platform, 8192)
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (size, size), dtype)
  w = jax.random.normal(keys[1], (size, size), dtype) * size ** -0.5  # keeps the norm of x

  @jax.jit
  def chain(x, w):
    return jax.lax.fori_loop(0, matmuls, lambda _, a: dot(a, w), x)

  jax.block_until_ready(chain(x, w))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(chain(x, w))
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 * matmuls / best


def _read_cache(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def device_peak(dtype, *, remeasure: bool = False) -> tuple[float, str]:
  """`(FLOP/s of one local device, where the figure comes from)`; measures when needed."""
  device = jax.local_devices()[0]
  peak = None if device.platform == "cpu" else table_peak(device.device_kind, dtype)
  if peak is not None:
    return peak, f"table ({device.device_kind}, {jnp.dtype(dtype).name})"
  path, key = cache_dir() / "peak_flops.json", _device_key(dtype)
  cache = _read_cache(path)
  if key in cache and cache[key].get("method") == MEASURE_METHOD and not remeasure:
    return cache[key]["flops_per_s"], f"measured {cache[key]['date']}, cached in {path}"
  peak = measure_peak(dtype)
  date = time.strftime("%Y-%m-%d %H:%M")
  entry = {"flops_per_s": peak, "date": date, "jax": jax.__version__, "method": MEASURE_METHOD}
  cache = {**_read_cache(path), key: entry}
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(cache, indent=2, sort_keys=True))
  os.replace(tmp, path)
  return peak, f"measured {date}, cached in {path}"


def job_peak(dtype, *, remeasure: bool = False) -> tuple[float, str]:
  """`(FLOP/s of all devices of the job, source)`: CPU hosts count once per process."""
  peak, source = device_peak(dtype, remeasure=remeasure)
  on_cpu = jax.local_devices()[0].platform == "cpu"
  return peak * (jax.process_count() if on_cpu else jax.device_count()), source
