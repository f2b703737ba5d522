"""Product-key memory feed-forward layer (`config.model.memory_ffn = "pkm"`).

Lample et al. 2019 ("Large Memory Layers with Product Keys") with the gated read of Memory+
(Berges et al. 2024, "Memory Layers at Scale", sec. 3): the memory replaces the up-projection of a
SwiGLU feed-forward, so a token touches `heads * topk` of the `n_keys**2` value rows.

Sharding: the value table has logical axes `("memory", "mlp")`. Mapping `mlp -> tensor` (the usual
Megatron rule) column-shards the table like the gate and output projections, which is Meta's
"memory parallel" layout: each device gathers its slice of every row, the gate is local, the
output projection reduces once and the table gradient stays a local shard. Mapping
`memory -> <axis>` shards the rows instead: correct, but XLA's partitioner then all-reduces the
gathered `[..., heads * topk, v_dim]` rows and a full-size table gradient, so prefer `mlp`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.base import FeedForward
from memzoo.models.layers.common import MEMORY_VALUES, Dense, param, sow_reads
from memzoo.models.layers.product_keys import ProductKeyRouter
from memzoo.models.layers.registry import register_ffn
from memzoo.models.ops.memory_usage import SlotReads
from memzoo.models.ops.product_keys import weighted_gather


@register_ffn("pkm")
class ProductKeyMemory(FeedForward):
  """`y = W_o(read(x) * silu(W_s x))` with `read(x) = sum_h sum_k w_hk V[slot_hk]` (Memory+ eq. for
  the SwiLU read); `(w, slot)` come from a `ProductKeyRouter` and the heads' reads are summed.

  Args:
    d_model: model width.
    n_keys: sub-keys per half; the value table has `n_keys**2` rows (1024 -> ~1M).
    heads: retrieval heads.
    topk: rows read per head.
    k_dim: query width per head; None means d_model.
    v_dim: value width (the hidden width of the gated read); None means d_model.
    memory_share_values: if True the layer holds no table and `__call__` takes one (`values=`):
      the owner (the LM backbone) makes it with `new_value_table` and passes it to every layer that
      shares it (Memory+ shares one table across all memory layers).
  """

  def __init__(self, d_model: int, n_keys: int = 1024, heads: int = 4, topk: int = 32,
               k_dim: int | None = None, v_dim: int | None = None, *,
               memory_share_values: bool = False, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.v_dim = v_dim or d_model
    self.param_dtype = param_dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.router = ProductKeyRouter(d_model, n_keys=n_keys, heads=heads, topk=topk,
                                   k_dim=k_dim or d_model, **kw)
    self.gate = Dense(d_model, self.v_dim, axes=("embed", "mlp"), **kw)
    self.out = Dense(self.v_dim, d_model, axes=("mlp", "embed"), **kw)
    self.values = None if memory_share_values else self.new_value_table(rngs)

  def new_value_table(self, rngs: nnx.Rngs) -> nnx.Param:
    """A fresh `[n_keys**2, v_dim]` value table, `N(0, v_dim^-1/2)` (Berges et al.), tagged for
    the `memory_values` optimizer group."""
    return param(rngs, nnx.initializers.normal(self.v_dim ** -0.5),
                 (self.router.num_slots, self.v_dim), ("memory", "mlp"), self.param_dtype,
                 optimizer_group=MEMORY_VALUES)

  def __call__(self, x: jnp.ndarray, *, values: nnx.Param | None = None) -> jnp.ndarray:
    """`x [..., d] -> [..., d]`; `values`: the shared table, when built with memory_share_values."""
    if (values is None) == (self.values is None):
      raise ValueError("ProductKeyMemory: pass values= exactly when built with "
                       "memory_share_values=True (the table then lives with its owner)")
    table = (self.values if values is None else values)[...]
    weights, slots = self.router(x)  # [..., H, k]
    sow_reads(self, SlotReads(slots, self.router.num_slots, self.router.n_keys))
    flat = lambda a: a.reshape(*a.shape[:-2], -1)  # heads' reads are summed: one bag of H*k rows
    dtype = self.out.dtype or x.dtype
    read = weighted_gather(table, flat(slots), flat(weights)).astype(dtype)
    return self.out(read * jax.nn.silu(self.gate(x)))

  def flops(self, batch: int, seq_len: int) -> int:
    """Router, the weighted sum of the read rows, and the gate and output projections."""
    tokens = batch * seq_len
    read = 2 * tokens * self.router.reads * self.v_dim
    return self.router.flops(tokens) + read + self.gate.flops(tokens) + self.out.flops(tokens)
