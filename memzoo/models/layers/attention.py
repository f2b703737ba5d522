"""Multi-head softmax attention with RoPE and GQA (optionally behind a short conv): the baseline
mixer."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.base import Mixer
from memzoo.models.layers.common import Dense, ShortConv, projection_flops, short_convs
from memzoo.models.layers.registry import register_mixer
from memzoo.models.ops.attention import attention, attention_flops
from memzoo.models.ops.ring_attention import (ring_self_attention, sharded_cache_attention,
                                              sharded_cache_write)
from memzoo.models.ops.rope import apply_rope
from memzoo.models.ops.segments import segment_positions
from memzoo.models.ops.sequence_parallel import sequence_parallel_size

_UNWRITTEN = 2 ** 30  # position given to empty cache slots: later than any query, so masked


@register_mixer("attention")
class Attention(Mixer):
  """Causal multi-head attention (Vaswani et al. 2017) with rotary positions and grouped KV heads.

  Args:
    d_model: model width.
    num_heads: query heads H.
    num_kv_heads: key/value heads (divides H); None means H.
    head_dim: per-head width; None means d_model // H.
    rope_theta: RoPE base.
    window: sliding-window size (None: full causal attention).
    impl: "naive", "blockwise", or "auto" (naive while the score matrix is no larger than one
      block pair, `q_len * kv_len <= block_q * block_k`: training up to 512 tokens, and every
      decode step, whose single query would otherwise be padded to a whole query block).
    block_q, block_k: blockwise block sizes.
    load_balance: zigzag reordering for causal ring attention.
    conv_size: kernel of a short causal conv (then SiLU) on q, k and v before RoPE, as the linear
      mixers have; None (the default) for plain attention. It hands each position its few
      predecessors, the "previous token" half of an induction head (Olsson et al. 2022), which
      attention otherwise learns slowly (experiments/mqar_state_size). Decode keeps its K-1 tails.

  Sequence parallelism: when the current mesh (`jax.set_mesh`) has a "sequence" axis of size > 1,
  training calls run ring attention over it (ops/ring_attention.py) and decode calls keep the KV
  cache sharded over it; no other code needs to know.
  """

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None,
               head_dim: int | None = None, *, rope_theta: float = 10000.0,
               window: int | None = None, impl: str = "auto", block_q: int = 512,
               block_k: int = 512, load_balance: bool = True, conv_size: int | None = None,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or d_model // num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Dense(d_model, (num_heads, head_dim), axes=("embed", "heads", "head_dim"), **kw)
    self.k_proj = Dense(d_model, (num_kv_heads, head_dim), axes=("embed", "kv_heads", "head_dim"),
                        **kw)
    self.v_proj = Dense(d_model, (num_kv_heads, head_dim), axes=("embed", "kv_heads", "head_dim"),
                        **kw)
    self.o_proj = Dense((num_heads, head_dim), d_model, axes=("heads", "head_dim", "embed"), **kw)
    self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
    self.rope_theta, self.window = rope_theta, window
    self.impl, self.block_q, self.block_k = impl, block_q, block_k
    self.load_balance = load_balance
    conv = lambda heads, axis: ShortConv((heads, head_dim), kernel_size=conv_size,
                                         axes=(axis, "head_dim"), param_dtype=param_dtype,
                                         rngs=rngs)
    self.convs = nnx.List([conv(num_heads, "heads"), conv(num_kv_heads, "kv_heads"),
                           conv(num_kv_heads, "kv_heads")]) if conv_size else None

  def _qkv(self, x, positions, segment_ids=None, conv_tails=None):
    """`(q, k, v, conv tails)`; the tails are None without a conv."""
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    if self.convs is not None:
      (q, k, v), conv_tails = short_convs(self.convs, (q, k, v), segment_ids=segment_ids,
                                          tails=conv_tails)
    q = apply_rope(q, positions, self.rope_theta)
    k = apply_rope(k, positions, self.rope_theta)
    return q, k, v, conv_tails

  def _impl(self, q_len: int, kv_len: int) -> str:
    if self.impl == "auto":
      return "naive" if q_len * kv_len <= self.block_q * self.block_k else "blockwise"
    return self.impl

  def _attend(self, q, k, v, **kwargs):
    return attention(q, k, v, window=self.window, impl=self._impl(q.shape[1], k.shape[1]),
                     block_q=self.block_q, block_k=self.block_k, **kwargs)

  def flops(self, batch: int, seq_len: int) -> int:
    """Projections plus `attention_flops` of the single-device form (ring attention computes the
    same block pairs, spread over the sequence shards)."""
    heads = self.q_proj.out_shape[0]
    core = attention_flops(batch, seq_len, seq_len, heads, self.head_dim, self.head_dim,
                           impl=self._impl(seq_len, seq_len), window=self.window,
                           block_q=self.block_q, block_k=self.block_k)
    return projection_flops(self, batch * seq_len) + core

  def __call__(self, x, *, segment_ids=None):
    b, t, _ = x.shape
    q, k, v, _ = self._qkv(x, segment_positions(segment_ids, b, t), segment_ids)
    if sequence_parallel_size() > 1:
      y = ring_self_attention(q, k, v, segment_ids=segment_ids, window=self.window,
                              load_balance=self.load_balance, block_q=self.block_q,
                              block_k=self.block_k)
    else:
      y = self._attend(q, k, v, segment_ids=segment_ids)
    return self.o_proj(y)

  def init_state(self, batch_size: int, max_len: int):
    shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
    dtype = self.k_proj.dtype or self.k_proj.kernel[...].dtype
    state = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
             "pos": jnp.zeros((), jnp.int32)}
    if self.convs is not None:
      state["conv"] = tuple(conv.init_state(batch_size) for conv in self.convs)
    return state

  def prefill(self, x, state):
    b, t, _ = x.shape
    pos = state["pos"]
    positions = jnp.broadcast_to(pos + jnp.arange(t, dtype=jnp.int32), (b, t))
    q, k, v, conv_tails = self._qkv(x, positions, conv_tails=state.get("conv"))
    sharded = sequence_parallel_size() > 1  # the cache lives sharded over the sequence axis
    write = sharded_cache_write if sharded else functools.partial(
        jax.lax.dynamic_update_slice_in_dim, axis=1)
    k_cache = write(state["k"], k.astype(state["k"].dtype), pos)
    v_cache = write(state["v"], v.astype(state["v"].dtype), pos)
    slots = jnp.arange(k_cache.shape[1], dtype=jnp.int32)
    kv_positions = jnp.broadcast_to(jnp.where(slots < pos + t, slots, _UNWRITTEN),
                                    (b, slots.shape[0]))
    if sharded:
      y = sharded_cache_attention(q, k_cache, v_cache, q_positions=positions,
                                  kv_positions=kv_positions, window=self.window,
                                  block_q=self.block_q, block_k=self.block_k)
    else:
      y = self._attend(q, k_cache, v_cache, q_positions=positions, kv_positions=kv_positions)
    new_state = {"k": k_cache, "v": v_cache, "pos": pos + t}
    if conv_tails is not None:
      new_state["conv"] = conv_tails
    return self.o_proj(y), new_state

  def step(self, x_t, state):
    y, state = self.prefill(x_t[:, None], state)
    return y[:, 0], state
