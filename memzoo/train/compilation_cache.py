"""JAX's persistent compilation cache for `memzoo-train` (MaxText's `jax_cache_dir`).

A run stores every executable it compiles (state init, train and eval steps) keyed by the
program, the devices and the XLA flags; a later run of the same model on the same mesh loads them
instead of compiling (a 250-step trial of the default Shakespeare config: start-up 6.4 -> 3.0 s).

Not on a CPU process split into several devices (train/distributed.py): with jax 0.10.2, train
steps there hung in their gradient all-reduce after asynchronous checkpoints, far more often with
executables loaded from the cache (3 of 5 stress runs against 0 of 8 without it; without it the
hang was seen once, in a full default run), so `disable_where_unsafe` turns the cache off for
them.
"""

import jax

from memzoo.train.mfu import cache_dir


def enable(directory: str | None) -> str | None:
  """Turns the cache on in `directory` (None: `<memzoo cache>/jax`, see train/mfu.py; "": off,
  nothing is done). Must run before the first compilation. Returns the directory used."""
  if directory == "":
    return None
  directory = str(cache_dir() / "jax") if directory is None else directory
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the small ones too
  return directory


def disable_where_unsafe() -> str | None:
  """Turns the cache off in a CPU process with several devices (module docstring); call once the
  backend runs, before compiling. Returns why it was turned off, or None."""
  if not jax.config.jax_compilation_cache_dir:
    return None
  if jax.default_backend() == "cpu" and jax.local_device_count() > 1:
    jax.config.update("jax_compilation_cache_dir", None)
    return (f"compilation cache off: {jax.local_device_count()} CPU devices in one process "
            "(see memzoo/train/compilation_cache.py)")
  return None
