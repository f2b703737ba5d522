"""Multi-scale retention (RetNet, Sun et al. 2023, arXiv 2307.08621)."""

import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.common import head_width
from memzoo.models.layers.linear_mixer import LinearMixer
from memzoo.models.layers.registry import register_mixer
from memzoo.models.ops.rope import apply_rope


def retention_log_decay(num_heads: int) -> jnp.ndarray:
  """`log(gamma_h)` with `gamma_h = 1 - 2^(-5-h)` (RetNet sec. 2.2), shape `[H]`, float32."""
  return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(num_heads, dtype=jnp.float32))))

@register_mixer("retention")
class MultiScaleRetention(LinearMixer):
  """Retention: linear attention with a fixed decay gamma_h per head, rotary q / k, a per-head
  RMSNorm and a swish output gate, `o = W_o(swish(W_g x) * RMSNorm(Retention(x)))`.

  As in fla, the decay mask is not normalised (torchscale's row normalisations are replaced by the
  per-head RMSNorm), so the parallel, chunk and recurrent forms are the same function. Rotations
  use `ops.rope` (RetNet's xPos without the length-scaling factor, as torchscale does today).

  Args:
    expand_k, expand_v: total q / k and v widths as multiples of d_model (fla: 1 and 2).
    rope_theta: RoPE base.
    conv_size, mode, chunk_size: see LinearMixer (RetNet has no conv; off by default).
  """

  gate = "scalar"
  cpu_chunk_size = 32  # 6-8% faster than 64 (LinearMixer.default_chunk_size)

  def __init__(self, d_model: int, num_heads: int, *, expand_k: float = 1.0,
               expand_v: float = 2.0, rope_theta: float = 10000.0, conv_size: int | None = None,
               mode: str = "chunk", chunk_size: int | None = None, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, num_heads, head_width(d_model, expand_k, num_heads, "expand_k"),
                     head_width(d_model, expand_v, num_heads, "expand_v"), conv_size=conv_size,
                     output_gate=True, mode=mode, chunk_size=chunk_size, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
    self.rope_theta = rope_theta

  def features(self, x, q, k, v, positions):
    b, t = positions.shape
    log_decay = jnp.broadcast_to(retention_log_decay(self.num_heads), (b, t, self.num_heads))
    return {"q": apply_rope(q, positions, self.rope_theta),
            "k": apply_rope(k, positions, self.rope_theta), "v": v, "log_decay": log_decay}
