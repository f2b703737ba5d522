"""Packed-sequence helpers: segment ids mark which document each token belongs to."""

import jax
import jax.numpy as jnp
import numpy as np


def segment_starts(segment_ids: jnp.ndarray) -> jnp.ndarray:
  """`[B, T]` bool: True where a token opens a new segment (always True at t = 0)."""
  first = jnp.ones_like(segment_ids[:, :1], dtype=bool)
  return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def segment_positions(segment_ids: jnp.ndarray | None, batch: int, length: int) -> jnp.ndarray:
  """Position of every token inside its own segment, `[B, T]` int32 (0, 1, 2, ... per document).

  Without segments it is a numpy array, known while tracing, so that position tables (rope) are
  built as constants instead of being recomputed inside the fused ops that read them.
  """
  t = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  if segment_ids is None:
    return t
  start_index = jnp.where(segment_starts(segment_ids), t, 0)
  return t - jax.lax.cummax(start_index, axis=1)
