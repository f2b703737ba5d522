"""The device mesh: named axes data / fsdp / tensor / sequence, sizes from `config.mesh`.

`config.mesh.<axis>` sizes the axis within a slice (ICI), `config.mesh.dcn_<axis>` across slices
(the data-center network); the mesh axis size is their product. One ICI size may be -1: it takes
the devices the others leave.
"""

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from memzoo.errors import ConfigError

AXES = ("data", "fsdp", "tensor", "sequence")


def _positive(mesh_cfg, field: str, allow_fill: bool) -> int:
  size = mesh_cfg[field]
  if not isinstance(size, int) or not (size >= 1 or (allow_fill and size == -1)):
    allowed = "a positive int or -1" if allow_fill else "a positive int"
    raise ConfigError(f"config.mesh.{field}", f"must be {allowed}, got {size!r}")
  return size


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """`(ici_sizes, dcn_sizes)` in `AXES` order, the -1 filled in."""
  dcn = tuple(_positive(mesh_cfg, f"dcn_{a}", False) for a in AXES)
  ici = [_positive(mesh_cfg, a, True) for a in AXES]
  if ici.count(-1) > 1:
    raise ConfigError("config.mesh", "more than one axis is -1", "set all but one to a size")
  if num_devices % math.prod(dcn):
    raise ConfigError("config.mesh", f"dcn sizes {dcn} do not divide the {num_devices} devices",
                      "make their product divide the device count")
  per_slice = num_devices // math.prod(dcn)
  known = math.prod(s for s in ici if s != -1)
  if -1 in ici:
    if per_slice % known:
      raise ConfigError("config.mesh", f"fixed axes use {known} devices per slice, which does not "
                        f"divide the {per_slice} devices per slice", "choose sizes that divide it")
    ici[ici.index(-1)] = per_slice // known
  if math.prod(ici) != per_slice:
    sizes = {a: i * d for a, i, d in zip(AXES, ici, dcn)}
    raise ConfigError("config.mesh", f"sizes {sizes} use {math.prod(ici) * math.prod(dcn)} devices "
                      f"but {num_devices} are present", "make the product match, or use -1")
  return tuple(ici), dcn


def axis_sizes(mesh_cfg, num_devices: int) -> dict[str, int]:
  """The size of every mesh axis (within a slice times across slices)."""
  ici, dcn = mesh_shape(mesh_cfg, num_devices)
  return {axis: i * d for axis, i, d in zip(AXES, ici, dcn)}


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh over `devices` (default: all) with every axis typed Auto.

  JAX 0.9 changed `jax.make_mesh`'s default axis type to Explicit; memzoo relies on sharding
  propagation (Auto), so it always passes the types.
  """
  devices = jax.devices() if devices is None else list(devices)
  ici, dcn = mesh_shape(mesh_cfg, len(devices))
  types = (AxisType.Auto,) * len(AXES)
  if math.prod(dcn) > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  elif devices == jax.devices():
    return jax.make_mesh(ici, AXES, axis_types=types)
  else:
    grid = np.asarray(devices).reshape(ici)
  return Mesh(grid, AXES, axis_types=types)
