"""Feed-forward layers selectable by name (`config.model.ffn`)."""

import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.common import SwiGLU
from memzoo.models.layers.registry import register_ffn


def default_hidden(d_model: int, multiple: int = 64) -> int:
  """SwiGLU width with the parameter count of a 4x GELU MLP: 8/3 d, rounded up to `multiple`."""
  return -(-(8 * d_model // 3) // multiple) * multiple


@register_ffn("swiglu")
class SwiGLUFFN(SwiGLU):
  """SwiGLU feed-forward; `mlp_dim=None` picks `default_hidden(d_model)`."""

  def __init__(self, d_model: int, mlp_dim: int | None = None, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, mlp_dim or default_hidden(d_model), dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)


@register_ffn("identity")
class IdentityFFN(nnx.Module):
  """Zoology's MQAR models' `Identity` state mixer (Arora et al. 2023, Figure 2: no MLP). It returns
  its normed input, so the block adds norm(x) to the residual stream, as Zoology's blocks do."""

  def __init__(self, d_model: int, *, rngs: nnx.Rngs):
    del d_model, rngs

  def __call__(self, x):
    return x
