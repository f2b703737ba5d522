"""Shardings of parameters, optimizer state and batches, from the logical-axis rules."""

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from memzoo.models.partitioning import logical_to_spec

# Logical name -> mesh axes; names not listed are replicated. `config.mesh.rules` overrides it.
# Parameters: FSDP shards the model width over `fsdp`, tensor parallelism splits heads, the MLP
# hidden width, the vocabulary and memory tables over `tensor`. Activations: the batch over the
# data-parallel axes and, when the sequence axis is used, time over `sequence`.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("memory", "tensor"),
    ("layers", None),
)


def param_shardings(abstract_params: nnx.State, rules, mesh):
  """NamedSharding for every parameter, from its `out_sharding` logical-axis metadata."""
  def sharding(var):
    shape = var.get_value().shape
    axes = var.get_metadata().get("out_sharding") or (None,) * len(shape)
    return NamedSharding(mesh, logical_to_spec(axes, shape, rules, mesh))
  return jax.tree.map(sharding, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh, rules) -> NamedSharding:
  """`[B, T]` batches: rows over the data-parallel axes, time over `sequence` when it is used."""
  return NamedSharding(mesh, logical_to_spec(("batch", "length"), None, rules, mesh))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
