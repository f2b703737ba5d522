"""Depthwise causal 1-D convolution (the "short conv" of Mamba, GDN and Titans)."""

import jax
import jax.numpy as jnp

from memzoo.models.ops.attention import match_vma


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
  keep = None
  if segment_ids is not None:  # [K, B, T, 1]: tap j of token t stays inside t's segment
    def same_segment(lag):
      earlier = jnp.concatenate([jnp.full((batch, lag), -1, segment_ids.dtype), segment_ids],
                                axis=1)[:, :length]
      return (earlier == segment_ids) if lag else jnp.ones_like(segment_ids, bool)
    keep = jnp.stack([same_segment(width - 1 - j) for j in range(width)])[..., None]
  # Under shard_map a replicated weight is cast to vary like x; autodiff then sums its gradient.
  y = _filter(padded, match_vma(weight, padded), keep)
  return y.astype(x.dtype), padded[:, length:]


def _accumulator(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)  # float32, or float64 for float64 inputs


def _masked(x, keep, j):
  """`x [B, T, C]` with tap j's positions that reach into an earlier segment zeroed."""
  return x if keep is None else jnp.where(keep[j], x, 0.0)


def _tap(padded, keep, j, length):
  """`[B, T, C]`: the inputs that weight j multiplies, zero where a segment starts."""
  tap = jax.lax.dynamic_slice_in_dim(padded, j, length, axis=1).astype(_accumulator(padded.dtype))
  return _masked(tap, keep, j)


@jax.custom_vjp
def _filter(padded, weight, keep):
  """`[B, K-1+T, C]` inputs, `[K, C]` weights, `[K, B, T, 1]` bool tap masks (or None) -> `[B, T,
  C]` outputs in float32 (float64 for float64 inputs).

  Backward: the weight gradients in a loop over the K taps that takes the output cotangent as an
  operand, so that XLA materialises the cotangent once; under plain autodiff each tap's weight
  gradient (a reduction) re-evaluated the whole elementwise chain that produces the cotangent (in
  the linear mixers the SiLU, L2 norm and feature backwards: ~14 us per token of thread time in
  DeltaNet at T=1K). The input gradient, a sum of shifted products, is one fusion."""
  length = padded.shape[1] - weight.shape[0] + 1
  return sum(_tap(padded, keep, j, length) * weight[j].astype(_accumulator(padded.dtype))
             for j in range(weight.shape[0]))


def _filter_forward(padded, weight, keep):
  return _filter(padded, weight, keep), (padded, weight, keep)


def _filter_backward(residuals, dy):
  padded, weight, keep = residuals
  width, length = weight.shape[0], dy.shape[1]

  def tap_gradient(j, d_weight):
    return d_weight.at[j].set(jnp.sum(_tap(padded, keep, j, length) * dy, axis=(0, 1)))

  zeros = match_vma(jnp.zeros(weight.shape, dy.dtype), padded, dy)  # a loop carry in shard_map
  d_weight = jax.lax.fori_loop(0, width, tap_gradient, zeros)
  d_padded = 0.0
  for j in range(width):
    contribution = _masked(dy * weight[j].astype(dy.dtype), keep, j)
    d_padded = d_padded + jnp.pad(contribution, ((0, 0), (j, width - 1 - j), (0, 0)))
  return d_padded.astype(padded.dtype), d_weight.astype(weight.dtype), None


_filter.defvjp(_filter_forward, _filter_backward)
