"""The device mesh: named axes data / fsdp / tensor / sequence, sizes from `config.mesh`."""

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from memzoo.errors import ConfigError

AXES = ("data", "fsdp", "tensor", "sequence")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Axis sizes in `AXES` order; at most one `-1`, which takes the remaining devices."""
  sizes = [mesh_cfg[a] for a in AXES]
  for axis, size in zip(AXES, sizes):
    if not isinstance(size, int) or size == 0 or size < -1:
      raise ConfigError(f"config.mesh.{axis}", f"must be a positive int or -1, got {size!r}")
  if sizes.count(-1) > 1:
    raise ConfigError("config.mesh", "more than one axis is -1", "set all but one to a size")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError("config.mesh", f"fixed axes use {known} devices, which does not divide "
                        f"the {num_devices} devices", "choose sizes whose product divides it")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError("config.mesh", f"sizes {dict(zip(AXES, sizes))} use {math.prod(sizes)} "
                      f"devices but {num_devices} are present", "make the product match, or use -1")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh over `devices` (all devices by default) with every axis typed Auto.

  JAX 0.9 changed `jax.make_mesh`'s default axis type to Explicit; memzoo relies on sharding
  propagation (Auto), so it always passes the types.
  """
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))
