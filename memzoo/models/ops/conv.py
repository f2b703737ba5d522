"""Depthwise causal 1-D convolution (the "short conv" of Mamba, GDN and Titans)."""

import jax.numpy as jnp


def causal_conv1d(x: jnp.ndarray, weight: jnp.ndarray, *, segment_ids: jnp.ndarray | None = None,
                  initial_state: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`y_t = sum_j weight[j] * x_{t - (K-1) + j}` per channel.

  Args:
    x: `[B, T, C]`.
    weight: `[K, C]`; `weight[-1]` multiplies the current token.
    segment_ids: optional `[B, T]`; taps never reach into an earlier segment.
    initial_state: optional `[B, K-1, C]`, the K-1 inputs that precede `x` (zeros if None).

  Returns:
    `(y [B, T, C], final_state [B, K-1, C])`; the state is what `initial_state` is for the next
    call.
  """
  width = weight.shape[0]
  batch, length, channels = x.shape
  if initial_state is None:
    initial_state = jnp.zeros((batch, width - 1, channels), x.dtype)
  padded = jnp.concatenate([initial_state.astype(x.dtype), x], axis=1)  # [B, K-1+T, C]
  y = jnp.zeros((batch, length, channels), jnp.float32)
  for j in range(width):
    lag = width - 1 - j
    tap = padded[:, j:j + length].astype(jnp.float32)
    if segment_ids is not None and lag:
      prev_ids = jnp.concatenate(
          [jnp.full((batch, lag), -1, segment_ids.dtype), segment_ids], axis=1)[:, :length]
      tap = jnp.where((prev_ids == segment_ids)[..., None], tap, 0.0)
    y = y + tap * weight[j].astype(jnp.float32)
  return y.astype(x.dtype), padded[:, length:]
