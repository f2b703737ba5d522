"""Linear attention with a feature map (Katharopoulos et al. 2020; Based, Arora et al. 2024)."""

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.layers.common import head_width
from memzoo.models.layers.linear_mixer import LinearMixer
from memzoo.models.layers.registry import register_mixer


def taylor2(x: jnp.ndarray) -> jnp.ndarray:
  """Second-order Taylor map of exp (Based): `[1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]`,
  so that `phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)`; `[..., d] -> [..., 1+d+d^2]`."""
  d = x.shape[-1]
  outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (d * d,))
  return jnp.concatenate([jnp.ones_like(x[..., :1]), x * d ** -0.25, outer / (2 * d) ** 0.5], -1)


FEATURE_MAPS = {
    "identity": (lambda x: x, lambda d: d),
    "elu1": (lambda x: jax.nn.elu(x) + 1, lambda d: d),   # Katharopoulos et al. 2020, eq. 7
    "taylor2": (taylor2, lambda d: 1 + d + d * d),
}


@register_mixer("linear_attention")
class LinearAttention(LinearMixer):
  """Causal linear attention `o_t = phi(q_t)^T sum_{s<=t} phi(k_s) v_s^T` (no decay), followed by a
  per-head RMSNorm (which replaces the `phi(q)^T sum phi(k)` denominator: RMSNorm is invariant to
  the per-token, per-head rescaling it would apply) and the output projection.

  Args:
    feature_map: "identity", "elu1" (elu(x) + 1) or "taylor2" (Based).
    feature_dim: per-head width of q / k before the feature map; None means d_model // H (Based
      uses 16 with taylor2: the state then has 1 + 16 + 256 rows).
    expand_v: total v width as a multiple of d_model.
    output_gate: swish output gate.
    conv_size, mode, chunk_size: see LinearMixer (off by default).
  """

  def __init__(self, d_model: int, num_heads: int, *, feature_map: str = "elu1",
               feature_dim: int | None = None, expand_v: float = 1.0, output_gate: bool = False,
               conv_size: int | None = None, mode: str = "chunk", chunk_size: int | None = None,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if feature_map not in FEATURE_MAPS:
      raise ConfigError("config.model.linear_attention.feature_map", f"unknown {feature_map!r}",
                        f"choose one of {sorted(FEATURE_MAPS)}")
    key_dim = feature_dim or d_model // num_heads
    self.feature_map = feature_map
    value_dim = head_width(d_model, expand_v, num_heads, "expand_v")
    super().__init__(d_model, num_heads, key_dim, value_dim,
                     state_key_dim=FEATURE_MAPS[feature_map][1](key_dim), conv_size=conv_size,
                     output_gate=output_gate, mode=mode, chunk_size=chunk_size, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)

  def features(self, x, q, k, v, positions):
    phi = FEATURE_MAPS[self.feature_map][0]
    return {"q": phi(q), "k": phi(k), "v": v}
