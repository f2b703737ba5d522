"""Logical axis names -> mesh axes, for parameters (used by memzoo.train) and activations.

Rules are `(logical_name, mesh_axis | (mesh_axes...) | None)` pairs, as in `config.mesh.rules`.
Layers only name their axes; the trainer activates a mesh (`jax.set_mesh`) and the rules
(`nnx.logical_axis_rules`) while it traces the step, and `constrain` reads both.
"""

import flax.core.spmd
import jax
from jax.sharding import PartitionSpec as P


def logical_to_spec(logical_axes, shape, rules, mesh) -> P:
  """PartitionSpec for an array of `shape` whose axes have these logical names.

  A dimension stays replicated when its name has no rule, when the mesh axes do not divide it
  (skipped when `shape` is None), or when a mesh axis was already used by an earlier dimension.
  """
  table = dict(rules)
  used, spec = set(), []
  for name, dim in zip(logical_axes, shape or (None,) * len(logical_axes)):
    axes = table.get(name)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    size = 1
    for a in axes:
      size *= mesh.shape[a]
    if not axes or (dim is not None and dim % size):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
  """`with_sharding_constraint` by logical names under the current mesh and rules; a no-op when
  no mesh is set (a layer used on its own, or in someone else's model)."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = flax.core.spmd.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, rules, mesh))
