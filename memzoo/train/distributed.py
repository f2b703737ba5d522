"""Start-up before anything touches a device: how many devices a CPU host exposes, memzoo's
XLA:CPU flags, and the multi-host `jax.distributed.initialize` from `config.distributed` or the
environment."""

import os

import jax

from memzoo.errors import ConfigError

MAX_AUTO_CPU_DEVICES = 8
_COUNT_FLAG = "--xla_force_host_platform_device_count"


def auto_cpu_devices(config, cores: int) -> int:
  """`config.mesh.cpu_devices`: None (the default) gives the most devices, at most one per core
  (and 8), that the batch and each micro-batch split evenly over, 1 unless the mesh is
  data-parallel only and the job single-process; n >= 1 gives n."""
  if config.mesh.cpu_devices is not None:
    return config.mesh.cpu_devices
  mesh = config.mesh
  data_only = all(mesh[axis] == 1 for axis in (
      "fsdp", "tensor", "sequence", "dcn_data", "dcn_fsdp", "dcn_tensor", "dcn_sequence"))
  if not data_only or mesh.data != -1 or _is_multi_process(config.distributed):
    return 1
  micro_batch = config.train.batch_size // max(config.train.grad_accum_steps, 1)
  return max(n for n in range(1, min(cores, MAX_AUTO_CPU_DEVICES) + 1)
             if config.train.batch_size % n == 0 and micro_batch % n == 0)


def split_cpu_host(config) -> int | None:
  """Makes a CPU host expose `auto_cpu_devices` devices, which the data axis (`mesh.data=-1`)
  then fills: one batch shard per core instead of one device whose every op is split across the
  cores and joined again (for the default Shakespeare model that fork/join costs a fifth to a
  third of the step: 2 cores, 47 -> 32-40 ms; the loop's one-step bound in train/trainer.py keeps
  it clear of XLA:CPU's multi-device deadlock). Sets XLA_FLAGS, so it must run before the backend
  starts; GPU and TPU hosts are unaffected (the flag only shapes the CPU client). Returns the count
  set, or None when XLA_FLAGS already chooses one, the backend is running, or the count is 1."""
  count = auto_cpu_devices(config, len(os.sched_getaffinity(0)))
  return count if count > 1 and _add_xla_flag(_COUNT_FLAG, count) else None


_YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def apply_cpu_flags() -> bool:
  """Adds memzoo's XLA:CPU flag to XLA_FLAGS unless XLA_FLAGS sets it already: reductions are
  emitted by XLA instead of YNNPACK (`-reduce`). Call before the backend starts (memzoo-train,
  memzoo-bench and the experiments' benchmarks do; a program importing memzoo's layers can too).
  Returns whether it changed XLA_FLAGS; GPU and TPU backends ignore the flag.

  Why (jax 0.10.2, 2-core Intel host): YNNPACK ran a sum over the long axis of a `[1, T, C]`
  array on one thread, at ~36 ns per element; the weight gradients of the short causal convs are
  such sums, and at T=16K they took half of Gated DeltaNet's fwd+bwd. Without them: Gated
  DeltaNet 180 -> 127 us per token at 1K and 272 -> 135 at 16K (flat), retention 0.115 ->
  0.112 s, the 8-layer attention train step 4.83 -> 4.73 s.
  """
  return _add_xla_flag(_YNN_FUSION_FLAG, "-reduce")


def _add_xla_flag(name: str, value) -> bool:
  """Appends `name=value` to XLA_FLAGS unless XLA_FLAGS names it already (the user's choice
  stands) or the backend runs (too late to matter). Returns whether it did."""
  flags = os.environ.get("XLA_FLAGS", "")
  if name in flags or _backends_running():
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {name}={value}".strip()
  return True


def _backends_running() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def _is_multi_process(dist_cfg) -> bool:
  return bool(dist_cfg.enabled or os.environ.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize(dist_cfg) -> None:
  """Joins the processes of a multi-host job; a no-op for single-process runs.

  Turned on by `config.distributed.enabled` or by the JAX_COORDINATOR_ADDRESS environment
  variable. Unset fields are detected by JAX (TPU pods, SLURM, ...). Must run before anything
  touches a device; every process must then run the same jitted steps in the same order.
  """
  if jax.distributed.is_initialized():
    return
  if not _is_multi_process(dist_cfg):
    return
  try:
    jax.distributed.initialize(coordinator_address=dist_cfg.coordinator_address,
                               num_processes=dist_cfg.num_processes,
                               process_id=dist_cfg.process_id)
  except ValueError as e:  # what JAX could not detect, or ids out of range
    raise ConfigError("config.distributed", " ".join(str(e).split()).rstrip("."),
                      "set coordinator_address, num_processes and process_id (0 <= process_id < "
                      "num_processes), or run where JAX detects them (TPU pods, SLURM)") from e


def is_writer() -> bool:
  """Process 0 writes logs and run files; every process takes part in checkpoints."""
  return jax.process_index() == 0
