"""Equal-FLOPs comparisons: a feed-forward layer's FLOPs per token, and the SwiGLU that matches.

  flops = ffn_flops_per_token(config.model, "pkm")      # the layer's own `flops` accounting
  config.model.mlp_dim = swiglu_width(flops, config.model.d_model)
"""

from typing import Any, Mapping

from flax import nnx

from memzoo.models.layers import registry


def ffn_flops_per_token(model_cfg: Mapping[str, Any], name: str) -> int:
  """Forward FLOPs per token of the feed-forward layer `name` as `model_cfg` builds it (counted
  by the layer's `flops` on an abstract copy: no parameter is allocated)."""
  layer = nnx.eval_shape(lambda: registry.build("ffn", name, model_cfg, rngs=nnx.Rngs(0)))
  return layer.flops(1, 1)


def swiglu_width(flops: float, d_model: int, multiple: int = 64) -> int:
  """The SwiGLU hidden width, a multiple of `multiple`, whose forward FLOPs per token (`6 d h`)
  are closest to `flops`."""
  return max(multiple, round(flops / (6 * d_model) / multiple) * multiple)
