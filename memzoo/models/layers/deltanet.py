"""DeltaNet (Schlag et al. 2021; Yang et al. 2024, arXiv 2406.06484) and Gated DeltaNet (Yang,
Kautz & Hatamizadeh 2025, arXiv 2412.06464)."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.common import Dense, head_width, l2_norm, param
from memzoo.models.layers.linear_mixer import LinearMixer
from memzoo.models.layers.registry import register_mixer
from memzoo.models.ops.delta_rule import delta_rule, delta_rule_flops


@register_mixer("deltanet")
class DeltaNet(LinearMixer):
  """Delta-rule memory `S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`: short causal conv
  + SiLU on q, k, v, L2-normalised q / k, `beta_t = sigmoid(W_beta x_t)`, then a per-head RMSNorm
  (optionally gated) and the output projection.

  Args:
    expand_k, expand_v: total q / k and v widths as multiples of d_model.
    conv_size: short-conv kernel (None: no conv).
    output_gate: swish output gate (fla: off for DeltaNet, on for Gated DeltaNet).
    mode, chunk_size: see LinearMixer ("parallel" is not available).
  """

  op = staticmethod(delta_rule)
  op_flops = staticmethod(delta_rule_flops)
  cpu_chunk_size = 32  # 2-8% faster than 64 at T = 1K-16K (LinearMixer.default_chunk_size)

  def __init__(self, d_model: int, num_heads: int, *, expand_k: float = 1.0,
               expand_v: float = 1.0, conv_size: int | None = 4, output_gate: bool = False,
               mode: str = "chunk", chunk_size: int | None = None, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, num_heads, head_width(d_model, expand_k, num_heads, "expand_k"),
                     head_width(d_model, expand_v, num_heads, "expand_v"), conv_size=conv_size,
                     output_gate=output_gate, mode=mode, chunk_size=chunk_size, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
    self.beta_proj = Dense(d_model, num_heads, axes=("embed", "heads"), dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)

  def features(self, x, q, k, v, positions):
    beta = jax.nn.sigmoid(self.beta_proj(x).astype(jnp.float32))
    return {"q": l2_norm(q), "k": l2_norm(k), "v": v, "beta": beta}


def a_log_init(key, shape, dtype):
  """Mamba2: A ~ U(1, 16), stored as log A."""
  return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0))


def dt_bias_init(key, shape, dtype, dt_min=1e-3, dt_max=0.1):
  """Mamba2: dt ~ logU(dt_min, dt_max); the bias is softplus^-1(dt) so softplus(bias) = dt."""
  log_dt = jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max))
  dt = jnp.maximum(jnp.exp(log_dt), 1e-4)
  return dt + jnp.log(-jnp.expm1(-dt))


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaNet):
  """DeltaNet with a Mamba2-style scalar decay per head (GDN eq. 10):
  `S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`,
  `log a_t = -exp(A_log) * softplus(W_a x_t + dt_bias)`, and a swish output gate.

  Args: as DeltaNet (defaults from fla: expand_v 2, output gate on).
  """

  gate = "scalar"

  def __init__(self, d_model: int, num_heads: int, *, expand_k: float = 1.0,
               expand_v: float = 2.0, conv_size: int | None = 4, output_gate: bool = True,
               mode: str = "chunk", chunk_size: int | None = None, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, num_heads, expand_k=expand_k, expand_v=expand_v,
                     conv_size=conv_size, output_gate=output_gate, mode=mode,
                     chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.decay_proj = Dense(d_model, num_heads, axes=("embed", "heads"), dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
    # The decay parameters stay float32 whatever param_dtype is.
    self.A_log = param(rngs, a_log_init, num_heads, ("heads",))
    self.dt_bias = param(rngs, dt_bias_init, num_heads, ("heads",))

  def features(self, x, q, k, v, positions):
    dt = jax.nn.softplus(self.decay_proj(x).astype(jnp.float32) + self.dt_bias[...])
    return {**super().features(x, q, k, v, positions),
            "log_decay": -jnp.exp(self.A_log[...]) * dt}
