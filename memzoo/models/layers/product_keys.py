"""The query side of product-key layers (PKM and PEER): which slots a token reads, and how much."""

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.common import Dense, RMSNorm, l2_norm, param
from memzoo.models.ops.product_keys import product_key_search


class ProductKeyRouter(nnx.Module):
  """Multi-head product-key retrieval (Lample et al. 2019): `x [..., d] -> (weights, slots)`.

    q_h = RMSNorm(W_q x + b)_h            per head and per half (the "query norm")
    s_h, slots_h = top-k over the n_keys^2 products of l2-normalised sub-keys (`product_key_search`)
    weights_h = softmax(s_h)              in float32, over the k slots of each head

  Normalising queries and keys bounds the scores, so the softmax temperature is the learned RMSNorm
  scale rather than an accident of the key norms.

  Args:
    d_model: input width.
    n_keys: sub-keys per half; the table has `n_keys**2` slots.
    heads: retrieval heads H, each with its own query and keys.
    topk: slots read per head.
    k_dim: query width per head (even); each half is `k_dim // 2`.
  """

  def __init__(self, d_model: int, *, n_keys: int, heads: int, topk: int, k_dim: int, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if k_dim % 2:
      raise ValueError(f"k_dim={k_dim} must be even (it is split into two sub-key halves)")
    if not 0 < topk <= n_keys:
      raise ValueError(f"topk={topk} must be in [1, n_keys={n_keys}]")
    half = k_dim // 2
    self.query = Dense(d_model, (heads, 2, half), axes=("embed", "heads", None, "head_dim"),
                       use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query_norm = RMSNorm((heads, 2, half), axes=("heads", None, "head_dim"),
                              param_dtype=param_dtype, rngs=rngs)
    self.keys = param(rngs, nnx.initializers.normal(half ** -0.5), (heads, 2, n_keys, half),
                      ("heads", None, None, "head_dim"), param_dtype)
    self.n_keys, self.heads, self.topk, self.k_dim = n_keys, heads, topk, k_dim

  @property
  def num_slots(self) -> int:
    return self.n_keys ** 2

  @property
  def reads(self) -> int:
    """Slots read per token, over all heads."""
    return self.heads * self.topk

  def flops(self, tokens: int) -> int:
    """Forward FLOPs: the query projection and the sub-key scores (top-k is not counted)."""
    return self.query.flops(tokens) + 2 * tokens * self.heads * self.n_keys * self.k_dim

  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`x [..., d] -> (weights [..., H, k] float32 (or wider), slots [..., H, k] int32)`."""
    q = self.query_norm(self.query(x))  # [..., H, 2, k_dim/2]
    q = q.reshape(*q.shape[:-2], self.k_dim)
    scores, slots = product_key_search(q, l2_norm(self.keys[...]), self.topk)
    return jax.nn.softmax(scores, axis=-1), slots
