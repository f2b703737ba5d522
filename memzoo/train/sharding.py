"""Logical axis names -> mesh axes -> NamedShardings for parameters, optimizer state and batches."""

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

# Logical name -> mesh axis (or tuple of axes, or None). Names not listed are replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("memory", "tensor"),
)


def logical_to_spec(logical_axes, shape, rules, mesh) -> P:
  """Maps logical axis names to a PartitionSpec; a dimension the mesh axes do not divide, or a
  mesh axis already used by an earlier dimension, stays replicated."""
  table = dict(rules)
  used, spec = set(), []
  for name, dim in zip(logical_axes, shape):
    axes = table.get(name)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    size = 1
    for a in axes:
      size *= mesh.shape[a]
    if not axes or dim % size:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def param_shardings(abstract_params: nnx.State, rules, mesh):
  """NamedSharding for every parameter, from its `out_sharding` logical-axis metadata."""
  def sharding(var):
    shape = var.get_value().shape
    axes = var.get_metadata().get("out_sharding") or (None,) * len(shape)
    return NamedSharding(mesh, logical_to_spec(axes, shape, rules, mesh))
  return jax.tree.map(sharding, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """`[B, T]` batches: batch over the data-parallel axes (time replicated unless sequence > 1)."""
  table = dict(rules)
  return NamedSharding(mesh, P(table["batch"], table.get("length") if mesh.shape["sequence"] > 1
                               else None))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
