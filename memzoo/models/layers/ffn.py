"""Feed-forward layers selectable by name (`config.model.ffn`)."""

import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.base import FeedForward
from memzoo.models.layers.common import SwiGLU
from memzoo.models.layers.registry import register_ffn
from memzoo.models.ops.blockwise_ffn import blockwise_feedforward


def default_hidden(d_model: int, multiple: int = 64) -> int:
  """SwiGLU width with the parameter count of a 4x GELU MLP: 8/3 d, rounded up to `multiple`."""
  return -(-(8 * d_model // 3) // multiple) * multiple


@register_ffn("swiglu")
class SwiGLUFFN(SwiGLU, FeedForward):
  """SwiGLU feed-forward; `mlp_dim=None` picks `default_hidden(d_model)`.

  `chunk_size`: apply it blockwise over time chunks of this many tokens under remat
  (ops/blockwise_ffn.py), so the backward never holds `[B, T, mlp_dim]` activations; None: at once.
  """

  def __init__(self, d_model: int, mlp_dim: int | None = None, *, chunk_size: int | None = None,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, mlp_dim or default_hidden(d_model), dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
    self.chunk_size = chunk_size

  def __call__(self, x):
    if self.chunk_size is not None and x.shape[1] > self.chunk_size:
      return blockwise_feedforward(super().__call__, x, self.chunk_size)
    return super().__call__(x)


@register_ffn("identity")
class IdentityFFN(FeedForward):
  """Zoology's MQAR models' `Identity` state mixer (Arora et al. 2023, Figure 2: no MLP). It returns
  its normed input, so the block adds norm(x) to the residual stream, as Zoology's blocks do."""

  def __init__(self, d_model: int, *, rngs: nnx.Rngs):
    del d_model, rngs

  def __call__(self, x):
    return x

  def flops(self, batch: int, seq_len: int) -> int:
    return 0
