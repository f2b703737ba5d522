"""Rotary position embeddings (Su et al., RoFormer, eq. 34), half-split layout."""

import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> jnp.ndarray:
  """Inverse frequencies `theta^(-2i/d)`, shape `[head_dim // 2]`, float32."""
  if head_dim % 2:
    raise ValueError(f"rope needs an even head_dim, got {head_dim}")
  return theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, theta: float = 10000.0) -> jnp.ndarray:
  """Rotates `x` by its positions.

  Args:
    x: `[B, T, H, D]`.
    positions: integer positions, `[B, T]` or `[T]`.
    theta: base of the frequencies.

  Returns:
    `x` rotated pairwise over (first half, second half) of the last axis, in x's dtype.
  """
  freqs = rope_frequencies(x.shape[-1], theta)
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [(B,) T, D/2]
  if angles.ndim == 2:
    angles = angles[None]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
