"""Rotary position embeddings (Su et al., RoFormer, eq. 34), half-split layout."""

import jax.numpy as jnp
import numpy as np


def rope_frequencies(head_dim: int, theta: float = 10000.0, xp=jnp, dtype=jnp.float32):
  """Inverse frequencies `theta^(-2i/d)`, shape `[head_dim // 2]`, as an `xp` (jnp or np) array."""
  if head_dim % 2:
    raise ValueError(f"rope needs an even head_dim, got {head_dim}")
  return theta ** (-xp.arange(0, head_dim, 2, dtype=dtype) / head_dim)


def rope_tables(positions, head_dim: int, theta: float = 10000.0):
  """`(sin, cos)` of the rotation angles, each `[B or 1, T, 1, D/2]` float32.

  Positions known while tracing (a numpy array, as `segment_positions` gives without segments)
  give constant tables, one row if every sequence has the same positions: fused into the rotation,
  XLA:CPU would recompute the sine and cosine for every head and both halves of `x`, which costs
  more than the rotation itself.
  """
  if isinstance(positions, np.ndarray):
    if positions.ndim == 2 and (positions == positions[:1]).all():
      positions = positions[0]
    angles = positions.astype(np.float64)[..., None] * rope_frequencies(head_dim, theta, np,
                                                                        np.float64)
    sin, cos = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
  else:
    angles = positions.astype(jnp.float32)[..., None] * rope_frequencies(head_dim, theta)
    sin, cos = jnp.sin(angles), jnp.cos(angles)
  if sin.ndim == 2:
    sin, cos = sin[None], cos[None]
  return sin[:, :, None, :], cos[:, :, None, :]


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, theta: float = 10000.0) -> jnp.ndarray:
  """Rotates `x` by its positions.

  Args:
    x: `[B, T, H, D]`.
    positions: integer positions, `[B, T]` or `[T]`.
    theta: base of the frequencies.

  Returns:
    `x` rotated pairwise over (first half, second half) of the last axis, in x's dtype.
  """
  sin, cos = rope_tables(positions, x.shape[-1], theta)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
