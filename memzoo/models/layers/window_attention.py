"""Sliding-window attention with an always-visible prefix: Titans' SW-Attn* (Behrouz et al. 2025,
§4.2), whose persistent-memory tokens stay visible to every query while other keys leave the window.

Queries are processed in blocks; a block of `b` queries attends to the prefix and to the `b + w - 1`
keys its window can reach, so memory and compute grow as T (w + b + prefix), never T^2. The decode
cache keeps the last w - 1 keys and values.
"""

import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.common import Dense
from memzoo.models.ops.attention import attention_mask, naive_attention
from memzoo.models.ops.rope import apply_rope
from memzoo.models.ops.segments import segment_positions

UNWRITTEN = 2 ** 30  # position of an empty key slot: later than any query, so never visible


def prefix_attention(q, k, v, mask, prefix_k, prefix_v):
  """Softmax attention of `q [B, T, H, D]` over `prefix_k/v [N, H, D]` (visible to all queries) and
  `k, v [B, S, H, D]` under `mask [B, T, S]`."""
  b, t = q.shape[:2]
  n = prefix_k.shape[0]
  keys = jnp.concatenate([jnp.broadcast_to(prefix_k.astype(k.dtype), (b, n) + k.shape[2:]), k], 1)
  values = jnp.concatenate([jnp.broadcast_to(prefix_v.astype(v.dtype), (b, n) + v.shape[2:]), v],
                           1)
  mask = jnp.concatenate([jnp.ones((b, t, n), bool), mask], axis=2)
  return naive_attention(q, keys, values, mask, q.shape[-1] ** -0.5)


class WindowAttention(nnx.Module):
  """Causal sliding-window multi-head attention (RoPE) with an optional always-visible prefix.

  Args:
    d_model, num_heads, head_dim: widths (head_dim = d_model // num_heads if None).
    window: a query sees the `window` most recent tokens, itself included.
    rope_theta: RoPE base (prefix keys are not rotated: they have no position).
    block_q: queries per block.
  """

  def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None, *, window: int,
               rope_theta: float = 10000.0, block_q: int = 256, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if window < 1:
      raise ValueError(f"window must be >= 1, got {window}")
    head_dim = head_dim or d_model // num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    axes = ("embed", "heads", "head_dim")
    self.q_proj, self.k_proj, self.v_proj = (Dense(d_model, (num_heads, head_dim), axes=axes, **kw)
                                             for _ in range(3))
    self.o_proj = Dense((num_heads, head_dim), d_model, axes=("heads", "head_dim", "embed"), **kw)
    self.num_heads, self.head_dim = num_heads, head_dim
    self.window, self.rope_theta, self.block_q = window, rope_theta, block_q

  def prefix_kv(self, prefix):
    """Keys and values `[N, H, D]` of prefix tokens `[N, d]` (no rotation)."""
    return self.k_proj(prefix), self.v_proj(prefix)

  def init_cache(self, batch_size: int, dtype=jnp.float32):
    shape = (batch_size, self.window - 1, self.num_heads, self.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "pos": jnp.full((batch_size, self.window - 1), UNWRITTEN, jnp.int32),
            "next": jnp.zeros((), jnp.int32)}

  def __call__(self, x, *, prefix=None, segment_ids=None):
    """`x [B, T, d] -> [B, T, d]`; `prefix [N, d]`; `segment_ids [B, T]` packed documents."""
    b, t = x.shape[:2]
    cache = self.init_cache(b, x.dtype)
    positions = segment_positions(segment_ids, b, t)
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids
    return self._attend(x, positions, seg, cache, jnp.full((b, self.window - 1), -1, seg.dtype),
                        prefix)[0]

  def prefill(self, x, cache, *, prefix=None):
    """Continues from `cache` (one document): `(y [B, T, d], cache)`."""
    b, t = x.shape[:2]
    positions = jnp.broadcast_to(cache["next"] + jnp.arange(t, dtype=jnp.int32), (b, t))
    seg = jnp.zeros((b, t), jnp.int32)
    y, cache = self._attend(x, positions, seg, cache, jnp.zeros((b, self.window - 1), jnp.int32),
                            prefix)
    return y, dict(cache, next=cache["next"] + t)

  def _attend(self, x, positions, seg, cache, cache_seg, prefix):
    b, t = x.shape[:2]
    q = apply_rope(self.q_proj(x), positions, self.rope_theta)
    k = apply_rope(self.k_proj(x), positions, self.rope_theta)
    v = self.v_proj(x)
    # History: the cached window then the new tokens; query i reaches history[i : i + window].
    hist_k = jnp.concatenate([cache["k"].astype(k.dtype), k], axis=1)
    hist_v = jnp.concatenate([cache["v"].astype(v.dtype), v], axis=1)
    hist_pos = jnp.concatenate([cache["pos"], positions], axis=1)
    hist_seg = jnp.concatenate([cache_seg, seg], axis=1)
    block = min(self.block_q, t)
    blocks = -(-t // block)
    pad = blocks * block - t
    padded = lambda a, value: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2),
                                      constant_values=value)
    span = block + self.window - 1
    index = (jnp.arange(blocks) * block)[:, None] + jnp.arange(span)[None, :]    # [nb, span]
    gather = lambda a, value: padded(a, value)[:, index].reshape((b * blocks, span) + a.shape[2:])
    split = lambda a, value: padded(a, value).reshape((b * blocks, block) + a.shape[2:])
    q_pos, q_seg = split(positions, 0), split(seg, -2)
    mask = attention_mask(q_pos, gather(hist_pos, UNWRITTEN), causal=True, window=self.window,
                          q_segment_ids=q_seg, kv_segment_ids=gather(hist_seg, -3))
    if prefix is None:
      prefix_k = prefix_v = jnp.zeros((0, self.num_heads, self.head_dim), q.dtype)
    else:
      prefix_k, prefix_v = self.prefix_kv(prefix)
    out = prefix_attention(split(q, 0), gather(hist_k, 0), gather(hist_v, 0), mask, prefix_k,
                           prefix_v)
    out = out.reshape((b, blocks * block) + out.shape[2:])[:, :t]
    cache = {"k": hist_k[:, t:].astype(cache["k"].dtype),
             "v": hist_v[:, t:].astype(cache["v"].dtype), "pos": hist_pos[:, t:],
             "next": cache["next"]}
    return self.o_proj(out), cache
