"""Multi-host start-up: `jax.distributed.initialize` from `config.distributed` or the
environment."""

import os

import jax


def maybe_initialize(dist_cfg) -> None:
  """Joins the processes of a multi-host job; a no-op for single-process runs.

  Turned on by `config.distributed.enabled` or by the JAX_COORDINATOR_ADDRESS environment
  variable. Unset fields are detected by JAX (TPU pods, SLURM, ...). Must run before anything
  touches a device; every process must then run the same jitted steps in the same order.
  """
  if jax.distributed.is_initialized():
    return
  if not (dist_cfg.enabled or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  jax.distributed.initialize(coordinator_address=dist_cfg.coordinator_address,
                             num_processes=dist_cfg.num_processes,
                             process_id=dist_cfg.process_id)


def is_writer() -> bool:
  """Process 0 writes logs and run files; every process takes part in checkpoints."""
  return jax.process_index() == 0
