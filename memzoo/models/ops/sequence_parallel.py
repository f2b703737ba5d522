"""Laying a sequence out over the `"sequence"` mesh axis (context parallelism).

* `sequence_parallel_size()`: whether the current mesh shards sequences (layers switch to their
  sequence-parallel form when it is > 1); `mesh_with_axis` resolves and checks the mesh a
  sequence-parallel op runs on.
* `from_previous_shard`: inside `shard_map`, what the shard before holds (a halo, one ppermute).
* Zigzag load balancing: with causal attention and contiguous shards, device i has i + 1 chunks of
  work and device 0 idles. Splitting the sequence into 2N chunks and giving device i the chunks i
  and 2N - 1 - i (the "zigzag" / dual-chunk-swap order of Megatron-CP and MaxText) evens it out.
  `zigzag_order` / `zigzag_restore` reorder global arrays (e.g. a batch, once, in a data pipeline);
  `zigzag_shard` / `zigzag_unshard` do the same inside a `shard_map` with two half-size ppermutes.
"""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P

SEQUENCE_AXIS = "sequence"


def sequence_parallel_size(axis_name: str = SEQUENCE_AXIS) -> int:
  """Size of mesh axis `axis_name` in the current mesh (`jax.set_mesh`); 1 when there is no such
  axis, or when it is already manual (we are inside a `shard_map` over it)."""
  mesh = jax.sharding.get_abstract_mesh()
  if axis_name not in mesh.axis_names or axis_name in mesh.manual_axes:
    return 1
  return mesh.shape[axis_name]


def mesh_with_axis(mesh, axis_name: str):
  """`mesh`, or the current mesh (`jax.set_mesh`) when None, checked to have `axis_name`."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if axis_name not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {axis_name!r}; pass axis_name= one of "
                     "them or run under jax.set_mesh with a sequence axis")
  return mesh


def from_previous_shard(x, axis_name: str):
  """Inside `shard_map`: every leaf of `x` from shard i - 1 on shard i; zeros on shard 0."""
  n = jax.lax.axis_size(axis_name)
  perm = [(i, i + 1) for i in range(n - 1)]
  return jax.tree.map(lambda a: jax.lax.ppermute(a, axis_name, perm), x)


def place_for_shard_map(x, mesh, axis_name: str, dim: int | None):
  """Lays `x` out as a `shard_map` over `axis_name` expects: that axis on dimension `dim` (None:
  replicated over it), other axes untouched. Only needed on meshes with explicit sharding, where
  `shard_map` checks the input's sharding instead of resharding it."""
  if x is None or mesh.axis_types[mesh.axis_names.index(axis_name)] != AxisType.Explicit:
    return x  # None: an absent optional input
  spec = list(jax.typeof(x).sharding.spec) + [None] * x.ndim
  spec = [_drop_axis(s, axis_name) for s in spec[:x.ndim]]
  if dim is not None:
    if spec[dim] is not None:
      raise ValueError(f"dimension {dim} of {jax.typeof(x)} is already sharded over {spec[dim]}; "
                       f"it cannot also be sharded over {axis_name!r}")
    spec[dim] = axis_name
  return jax.reshard(x, P(*spec))


def sharded_dim(x, mesh, axis_name: str) -> int | None:
  """The dimension of `x` sharded over explicit axis `axis_name`, if any."""
  if mesh.axis_types[mesh.axis_names.index(axis_name)] != AxisType.Explicit:
    return None
  for dim, entry in enumerate(jax.typeof(x).sharding.spec):
    if entry == axis_name or (isinstance(entry, tuple) and axis_name in entry):
      return dim
  return None


def _drop_axis(entry, axis_name):
  if entry == axis_name:
    return None
  if isinstance(entry, tuple):
    rest = tuple(a for a in entry if a != axis_name)
    return rest if len(rest) > 1 else (rest[0] if rest else None)
  return entry


# ------------------------------------------------------------------------------------------------
# Zigzag load balancing.


def _zigzag_order(num_shards: int) -> list[int]:
  """Chunk order of the zigzag layout: `[0, 2N-1, 1, 2N-2, ...]` (2N chunks, two per shard)."""
  return [c for i in range(num_shards) for c in (i, 2 * num_shards - 1 - i)]


def zigzag_order(x, num_shards: int, axis: int = 1):
  """Global array in natural order -> zigzag order along `axis` (length divisible by 2N)."""
  chunks = jnp.split(x, 2 * num_shards, axis)
  return jnp.concatenate([chunks[c] for c in _zigzag_order(num_shards)], axis)


def zigzag_restore(x, num_shards: int, axis: int = 1):
  """Inverse of `zigzag_order`."""
  chunks = jnp.split(x, 2 * num_shards, axis)
  slot = {c: s for s, c in enumerate(_zigzag_order(num_shards))}
  return jnp.concatenate([chunks[slot[c]] for c in range(2 * num_shards)], axis)


def _zigzag_permutations(n: int):
  """Where each shard's first / second half goes: global chunk c lives on shard c (c < N) or
  2N - 1 - c (c >= N) in the zigzag layout; contiguous shard i holds chunks 2i and 2i + 1."""
  owner = lambda c: c if c < n else 2 * n - 1 - c
  return [(i, owner(2 * i)) for i in range(n)], [(i, owner(2 * i + 1)) for i in range(n)]


def zigzag_shard(x, axis_name: str, axis: int = 1):
  """Inside `shard_map`: contiguous local shards -> zigzag local shards (two half-size ppermutes).

  Shard d receives one even and one odd global chunk; chunk d has d's parity and goes first.
  """
  n = jax.lax.axis_size(axis_name)
  even, odd = _zigzag_permutations(n)
  d_even = jax.lax.axis_index(axis_name) % 2 == 0

  def shard(leaf):
    first, second = jnp.split(leaf, 2, axis)
    got_even = jax.lax.ppermute(first, axis_name, even)
    got_odd = jax.lax.ppermute(second, axis_name, odd)
    return jnp.concatenate([jnp.where(d_even, got_even, got_odd),
                            jnp.where(d_even, got_odd, got_even)], axis)

  return jax.tree.map(shard, x)


def zigzag_unshard(x, axis_name: str, axis: int = 1):
  """Inverse of `zigzag_shard`."""
  n = jax.lax.axis_size(axis_name)
  even, odd = _zigzag_permutations(n)
  d_even = jax.lax.axis_index(axis_name) % 2 == 0
  inverse = lambda perm: [(dst, src) for src, dst in perm]

  def unshard(leaf):
    first, second = jnp.split(leaf, 2, axis)
    even_chunk = jnp.where(d_even, first, second)
    odd_chunk = jnp.where(d_even, second, first)
    return jnp.concatenate([jax.lax.ppermute(even_chunk, axis_name, inverse(even)),
                            jax.lax.ppermute(odd_chunk, axis_name, inverse(odd))], axis)

  return jax.tree.map(unshard, x)
