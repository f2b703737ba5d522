"""Usage statistics of sparse memory tables, for logging.

Memory layers sow the rows they read, `sow_reads(self, SlotReads(...))` (layers/common.py: an
`nnx.Intermediate` named "memory_reads", under `nnx.capture` only). The trainer collects them
without knowing the layers:

  logits, inter = nnx.capture(model, nnx.Intermediate)(tokens)
  for name, reads in find_reads(inter).items():
    counts[name] += table_counts(reads)         # accumulate over N batches
  stats = table_usage(counts[name])

A table that is barely read (a low `fraction_read`) or read very unevenly (a low entropy) wastes
parameters; Lample et al. (2019, sec. 4.4) report both as "memory usage" and "KL to uniform".
"""

import math

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class SlotReads:
  """The rows of a table that one call read.

  slots: `[..., K]` int row indices in `[0, num_slots)`.
  num_slots: rows in the table.
  n_keys: sub-keys per half when `slot = i * n_keys + j` is a product key, else None.
  """
  slots: jnp.ndarray
  num_slots: int = struct.field(pytree_node=False)
  n_keys: int | None = struct.field(pytree_node=False, default=None)


def find_reads(tree) -> dict[str, SlotReads]:
  """Every `SlotReads` in a pytree (e.g. the sown `nnx.Intermediate` state), keyed by its path."""
  is_reads = lambda x: isinstance(x, SlotReads)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_reads)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
          for path, leaf in flat if is_reads(leaf)}


def slot_counts(reads: SlotReads) -> jnp.ndarray:
  """`[num_slots]` int32: how many times each row was read."""
  return jnp.bincount(reads.slots.reshape(-1), length=reads.num_slots).astype(jnp.int32)


def normalized_entropy(counts: jnp.ndarray) -> jnp.ndarray:
  """Entropy of the distribution `counts / sum(counts)` over the last axis, divided by its maximum
  `log(len)`: 1 for uniform use, 0 when a single entry is used. Float32 scalar (or batch)."""
  p = counts.astype(jnp.float32) / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1)
  h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return h / math.log(counts.shape[-1]) if counts.shape[-1] > 1 else jnp.zeros_like(h)


def usage_stats(counts: jnp.ndarray, n_keys: int | None = None) -> dict[str, jnp.ndarray]:
  """Scalars to log from accumulated `slot_counts`.

  fraction_read: share of rows read at least once.
  slot_entropy:  normalized entropy of the row-read distribution.
  key_entropy:   (product keys only) mean normalized entropy of the two sub-key marginals.
  """
  stats = {"fraction_read": jnp.mean((counts > 0).astype(jnp.float32)),
           "slot_entropy": normalized_entropy(counts)}
  if n_keys is not None:
    grid = counts.reshape(n_keys, n_keys)
    stats["key_entropy"] = 0.5 * (normalized_entropy(grid.sum(1)) + normalized_entropy(grid.sum(0)))
  return stats


def table_counts(reads: SlotReads) -> jnp.ndarray:
  """`slot_counts` shaped `[n_keys, n_keys]` for product keys (row i, column j: slot
  `i * n_keys + j`), else `[num_slots]`: the shape carries `n_keys` through jit and sums."""
  counts = slot_counts(reads)
  return counts if reads.n_keys is None else counts.reshape(reads.n_keys, reads.n_keys)


def table_usage(counts: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """`usage_stats` of accumulated `table_counts`."""
  return usage_stats(counts.reshape(-1), counts.shape[0] if counts.ndim == 2 else None)


def memory_usage(reads: SlotReads) -> dict[str, jnp.ndarray]:
  """`usage_stats` of a single call's reads."""
  return usage_stats(slot_counts(reads), reads.n_keys)
