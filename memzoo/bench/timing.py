"""Timing rules shared by every benchmark: the machine they ran on, and a median of several runs.

Each measurement reports wall seconds and process CPU seconds (all threads). On a machine shared
with other jobs the wall time is meaningless, but the CPU time of one call still compares two
variants of the same program (it grows with cache contention, so only compare runs taken side by
side).
"""

import os
import platform
import statistics
import time
from typing import Callable, NamedTuple

import jax

from memzoo.train import huge_pages
from memzoo.train.mfu import host_cpu


def machine() -> str:
  """One line: CPU, memory, huge pages, OS, Python, JAX and its devices."""
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (f"{host_cpu()}; {memory:.0f} GiB RAM ({huge_pages.describe()}); {platform.platform()}; "
          f"python {platform.python_version()}; jax {jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} x {devices})")


class Timing(NamedTuple):
  """Medians over the timed calls, in seconds, and how many calls they summarise."""
  wall: float
  cpu: float
  repeats: int


def time_call(fn: Callable, *args, repeats: int, warmup: int = 2,
              min_seconds: float = 0.0) -> Timing:
  """Median wall and CPU seconds of `fn(*args)` over `repeats` calls, after `warmup` calls (the
  first compiles), or over as many more as it takes to spend `min_seconds` in timed calls (so that
  a call of a few milliseconds is not judged on three samples)."""
  return time_interleaved(fn, {None: args}, repeats=repeats, warmup=warmup,
                          min_seconds=min_seconds)[None]


def time_interleaved(fn: Callable, args: dict, *, repeats: int, warmup: int = 2,
                     min_seconds: float = 0.0) -> dict:
  """`{key: Timing of fn(*args[key])}`, timed in rounds of one call per key: `repeats` rounds, or
  more until every key has spent `min_seconds` in timed calls.

  Interleaving the keys (e.g. context lengths) spreads a drift of the machine's speed over all of
  them, instead of biasing the ones timed last: their ratios are what a benchmark reads.
  """
  for key_args in args.values():
    for _ in range(warmup):
      jax.block_until_ready(fn(*key_args))
  walls = {key: [] for key in args}
  cpus = {key: [] for key in args}
  rounds = 0
  while rounds < repeats or min(map(sum, walls.values()), default=min_seconds) < min_seconds:
    for key, key_args in args.items():
      wall, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*key_args))
      walls[key].append(time.perf_counter() - wall)
      cpus[key].append(time.process_time() - cpu)
    rounds += 1
  return {key: Timing(statistics.median(walls[key]), statistics.median(cpus[key]), rounds)
          for key in args}
