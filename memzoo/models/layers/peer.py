"""PEER feed-forward layer (He 2024, "Mixture of A Million Experts"; `memory_ffn = "peer"`).

Parameter-Efficient Expert Retrieval: `n_keys**2` single-neuron experts `e_i(x) = gelu(u_i . x) v_i`
addressed by product keys. Each head picks its top-k experts and mixes them with softmax router
weights (He 2024, eqs. 1-4); the heads' outputs are summed, so a token runs `heads * topk` neurons.

The expert tables `u, v [n_keys**2, d_model]` have logical axes `("memory", "embed")`: an expert is
a row, so mapping `memory -> <axis>` is expert parallelism over rows.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.base import FeedForward
from memzoo.models.layers.common import MEMORY_VALUES, param, sow_reads
from memzoo.models.layers.product_keys import ProductKeyRouter
from memzoo.models.layers.registry import register_ffn
from memzoo.models.ops.memory_usage import SlotReads
from memzoo.models.ops.product_keys import gathered_dot, weighted_gather


@register_ffn("peer")
class PEER(FeedForward):
  """`y = sum_h sum_k w_hk gelu(u_{i_hk} . x) v_{i_hk}`, `(w, i)` from a `ProductKeyRouter`.

  Args:
    d_model: model width.
    n_keys: sub-keys per half; `n_keys**2` experts (1024 -> ~1M, as in He 2024).
    heads: retrieval heads (He 2024 uses 8).
    topk: experts per head (He 2024 uses 16).
    k_dim: query width per head; None means d_model.
  """

  def __init__(self, d_model: int, n_keys: int = 1024, heads: int = 8, topk: int = 16,
               k_dim: int | None = None, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.router = ProductKeyRouter(d_model, n_keys=n_keys, heads=heads, topk=topk,
                                   k_dim=k_dim or d_model, dtype=dtype, param_dtype=param_dtype,
                                   rngs=rngs)
    shape, axes = (self.router.num_slots, d_model), ("memory", "embed")
    init = nnx.initializers.normal(d_model ** -0.5)
    self.down = param(rngs, init, shape, axes, param_dtype, optimizer_group=MEMORY_VALUES)  # u_i
    self.up = param(rngs, init, shape, axes, param_dtype, optimizer_group=MEMORY_VALUES)  # v_i
    self.dtype = dtype

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`x [..., d] -> [..., d]`."""
    weights, slots = self.router(x)  # [..., H, k]
    sow_reads(self, SlotReads(slots, self.router.num_slots, self.router.n_keys))
    flat = lambda a: a.reshape(*a.shape[:-2], -1)  # one bag of H*k experts per token
    slots, weights = flat(slots), flat(weights)
    hidden = jax.nn.gelu(gathered_dot(self.down[...], slots, x))  # [..., H*k] neuron activations
    return weighted_gather(self.up[...], slots, weights * hidden).astype(self.dtype or x.dtype)

  def flops(self, batch: int, seq_len: int) -> int:
    """Router, then each read expert's down dot product and weighted up row."""
    tokens = batch * seq_len
    d_model = self.down.get_value().shape[1]
    return self.router.flops(tokens) + 2 * 2 * tokens * self.router.reads * d_model
