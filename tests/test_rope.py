"""Rotary position embeddings: the rotation against float64, relative-position invariance, and
constant tables when the positions are known while tracing."""

import jax
import jax.numpy as jnp
import numpy as np

from memzoo.models.ops.rope import apply_rope
from memzoo.models.ops.segments import segment_positions


def rotate_float64(x, positions, theta=10000.0):
  """The definition: pairs (x_i, x_{i + D/2}) rotated by positions * theta^(-2i/D)."""
  half = x.shape[-1] // 2
  angles = positions[..., None, None] * theta ** (-np.arange(half) * 2.0 / x.shape[-1])
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles),
                         x2 * np.cos(angles) + x1 * np.sin(angles)], axis=-1)


def test_rotation_matches_float64_for_known_and_traced_positions():
  """Positions from `segment_positions` (numpy, no segments) and the same positions traced."""
  x = np.random.default_rng(0).standard_normal((2, 300, 3, 16)).astype(np.float32)
  positions = segment_positions(None, 2, 300)
  assert isinstance(positions, np.ndarray)
  want = rotate_float64(x.astype(np.float64), positions.astype(np.float64))
  known = jax.jit(lambda x: apply_rope(x, positions))(x)
  traced = jax.jit(apply_rope)(x, jnp.asarray(positions))
  for got in (known, traced):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-4)
  offset = jax.jit(apply_rope)(x[:, 299:], jnp.full((2, 1), 299))  # a decode step at position 299
  np.testing.assert_allclose(offset, known[:, 299:], atol=2e-4)


def test_scores_depend_only_on_the_position_difference():
  rng = np.random.default_rng(1)
  q, k = (rng.standard_normal((1, 1, 1, 32)).astype(np.float32) for _ in range(2))
  score = lambda m, n: float(jnp.sum(apply_rope(q, jnp.array([m])) * apply_rope(k, jnp.array([n]))))
  np.testing.assert_allclose(score(7, 3), score(107, 103), rtol=1e-4)
  np.testing.assert_allclose(score(3, 7), score(500, 504), rtol=1e-4)


def test_known_positions_build_constant_tables():
  """No sine or cosine is left in the compiled rotation: XLA:CPU would otherwise evaluate them
  inside the fused rotation once per head and half (the reason for the numpy tables)."""
  x = jnp.ones((2, 64, 4, 32))
  hlo = jax.jit(lambda x: apply_rope(x, segment_positions(None, 2, 64))).lower(x).as_text()
  assert "sine" not in hlo and "cosine" not in hlo
  traced = jax.jit(lambda x, p: apply_rope(x, p)).lower(x, jnp.zeros((2, 64), jnp.int32)).as_text()
  assert "sine" in traced and "cosine" in traced
