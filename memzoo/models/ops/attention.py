"""Softmax attention, `[batch, time, heads, dim]` layout, with GQA, causal / sliding-window masks
and packed segments.

`impl="naive"` materialises the `[T, S]` score matrix and keeps the probabilities for a written-out
backward (autodiff through the masked softmax costs twice as much on CPU). `impl="blockwise"` is
the memory-efficient form with the same semantics: online softmax over key blocks for each query
block (Rabe & Staats 2021; FlashAttention, Dao et al. 2022), and a custom VJP whose backward
recomputes the probabilities block by block from the saved log-sum-exp (FlashAttention-2, Dao 2023,
Alg. 2); its tiles are laid out so no elementwise pass reads one transposed. Memory is
O(T * block) instead of O(T * S); block pairs that the mask hides entirely are skipped.

The blockwise building blocks (`Tokens`, `split_blocks`, `attend_chunk`, `attend_chunk_grads`, ...)
are public so that ring attention (ops/ring_attention.py) runs the same machinery on each device.
Blocked arrays put the block axis first: queries `[Nq, B, bq, K, G, D]` (K kv heads, G = H // K
query heads per kv head), keys and values `[Nk, B, bk, K, D]`, per-query statistics
`[Nq, B, K, G, bq]`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memzoo.models.ops.chunking import from_chunks, pad_time, to_chunks

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
  out = _dense(qg, k, v, mask, scale)
  return out.reshape(b, t, h, v.shape[-1]).astype(q.dtype)


def _dense_probs(qg, k, mask, scale):
  """`[B, K, G, T, S]` float32 softmax probabilities; rows that see no key are zero."""
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  m = mask[:, None, None]
  logits = jnp.where(m, logits, _MASKED)
  probs = jnp.where(m, jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), 0.0)
  return probs / jnp.maximum(jnp.sum(probs, axis=-1, keepdims=True), 1e-30)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _dense(qg, k, v, mask, scale):
  return _dense_fwd(qg, k, v, mask, scale)[0]


def _dense_fwd(qg, k, v, mask, scale):
  """`qg [B, T, K, G, D]`, `k, v [B, S, K, D]` -> `[B, T, K, G, Dv]` in q's dtype; the
  probabilities are the residual (this form holds them anyway)."""
  probs = _dense_probs(qg, k, mask, scale).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
  return out.astype(qg.dtype), (qg, k, v, probs)


def _dense_bwd(scale, residuals, do):
  """Softmax attention's backward written out (FlashAttention-2, Alg. 2, as one block):
  dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = dS K, dK = dS^T Q."""
  qg, k, v, probs = residuals
  f32 = dict(preferred_element_type=jnp.float32)
  dv = jnp.einsum("bkgts,btkgd->bskd", probs, do.astype(v.dtype), **f32)
  dp = jnp.einsum("btkgd,bskd->bkgts", do, v, **f32)
  probs = probs.astype(jnp.float32)
  ds = probs * (dp - jnp.sum(probs * dp, axis=-1, keepdims=True)) * scale
  dq = jnp.einsum("bkgts,bskd->btkgd", ds.astype(k.dtype), k, **f32)
  dk = jnp.einsum("bkgts,btkgd->bskd", ds.astype(qg.dtype), qg, **f32)
  return dq.astype(qg.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_dense.defvjp(_dense_fwd, _dense_bwd)


# ------------------------------------------------------------------------------------------------
# Blockwise machinery.


class Tokens(NamedTuple):
  """What the mask knows about the tokens of one side: each field `[B, L]` (or blocked `[N, B, C]`).

  `valid` is False on padding, which neither sees nor is seen by anything.
  """
  positions: jnp.ndarray
  segment_ids: jnp.ndarray | None
  valid: jnp.ndarray


def make_tokens(positions, segment_ids=None) -> Tokens:
  return Tokens(positions, segment_ids, jnp.ones(positions.shape, bool))


class Softmax(NamedTuple):
  """Running online-softmax state of each query: max logit `m`, normaliser `l` (both `[..., bq]`)
  and the unnormalised output `acc` (`[..., bq, Dv]`), all float32."""
  m: jnp.ndarray
  l: jnp.ndarray
  acc: jnp.ndarray


def split_blocks(x, block: int):
  """`[B, L, ...] -> [ceil(L / block), B, block, ...]`, zero padded (Tokens pad `valid=False`)."""
  return jax.tree.map(lambda a: to_chunks(pad_time(a, block), block), x)


def merge_blocks(x, length: int):
  """Inverse of `split_blocks`: `[N, B, block, ...] -> [B, length, ...]`."""
  return jax.tree.map(lambda a: from_chunks(a)[:, :length], x)


def token_mask(qt: Tokens, kt: Tokens, *, causal: bool, window: int | None) -> jnp.ndarray:
  """`[B, Lq, Lk]` bool, `attention_mask` restricted to valid tokens."""
  mask = attention_mask(qt.positions, kt.positions, causal=causal, window=window,
                        q_segment_ids=qt.segment_ids, kv_segment_ids=kt.segment_ids)
  return mask & qt.valid[:, :, None] & kt.valid[:, None, :]


def _span(values, valid):
  """Per-row min and max of `values [B, L]` over valid tokens."""
  info = jnp.iinfo(values.dtype)
  return (jnp.min(jnp.where(valid, values, info.max), axis=-1),
          jnp.max(jnp.where(valid, values, info.min), axis=-1))


def block_visible(qt: Tokens, kt: Tokens, *, causal: bool, window: int | None) -> jnp.ndarray:
  """Scalar bool, False only if no query of `qt` sees any key of `kt` (so the pair can be skipped).

  Conservative: it compares the ranges of positions and segment ids, which costs O(L), not O(L^2).
  """
  q_lo, q_hi = _span(qt.positions, qt.valid)
  k_lo, k_hi = _span(kt.positions, kt.valid)
  seen = jnp.any(qt.valid, axis=-1) & jnp.any(kt.valid, axis=-1)
  if causal:
    seen &= k_lo <= q_hi
  if window is not None:
    seen &= (q_lo - k_hi < window) & (k_lo - q_hi < window)
  if qt.segment_ids is not None:
    qs_lo, qs_hi = _span(qt.segment_ids, qt.valid)
    ks_lo, ks_hi = _span(kt.segment_ids, kt.valid)
    seen &= (qs_lo <= ks_hi) & (ks_lo <= qs_hi)
  return jnp.any(seen)


def match_vma(tree, *refs):
  """Marks the leaves of `tree` as varying over every manual mesh axis that a leaf of `refs` varies
  over. Inside `shard_map` loop carries and `cond` branches must agree on it; elsewhere a no-op."""
  varying = lambda x: jax.typeof(x).manual_axis_type.varying
  axes = frozenset().union(*(varying(r) for r in jax.tree.leaves(refs)))

  def cast(x):
    missing = tuple(sorted(axes - varying(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree)


def _query_rows(x):
  """`[B, bq, K, G, D] -> [B, K, G*bq, D]`: a tile's query rows, kv head first."""
  b, bq, kv_heads, g, d = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * bq, d)


def _key_rows(x):
  """`[B, bk, K, D] <-> [B, K, bk, D]`."""
  return jnp.swapaxes(x, 1, 2)


def _query_mask(mask, g: int):
  """`[B, bq, bk] -> [B, 1, G*bq, bk]`, the mask of `_query_rows`."""
  return jnp.tile(mask, (1, g, 1))[:, None]


def init_softmax(q_blocks, dv: int) -> Softmax:
  """The empty state for `q_blocks [Nq, B, bq, K, G, D]` and value width `dv`."""
  n, b, bq, kh, g, _ = q_blocks.shape
  stats = (n, b, kh, g, bq)
  return Softmax(jnp.full(stats, _MASKED, jnp.float32), jnp.zeros(stats, jnp.float32),
                 jnp.zeros(stats + (dv,), jnp.float32))


def _softmax_update(s: Softmax, qb, kb, vb, mask, scale) -> Softmax:
  """Folds one key block into the running softmax of one query block (FlashAttention-2, Alg. 1),
  on `[B, K, G*bq, bk]` tiles; `mask [B, bq, bk]`."""
  b, bq, kv_heads, g, _ = qb.shape
  rows = lambda x: x.reshape(b, kv_heads, g * bq, *x.shape[4:])  # [B, K, G, bq, ...]
  mask = _query_mask(mask, g)
  logits = jnp.einsum("bknd,bksd->bkns", _query_rows(qb), _key_rows(kb),
                      preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits, _MASKED)
  m = jnp.maximum(rows(s.m), jnp.max(logits, axis=-1))
  p = jnp.where(mask, jnp.exp(logits - m[..., None]), 0.0)
  alpha = jnp.exp(rows(s.m) - m)
  pv = jnp.einsum("bkns,bksd->bknd", p.astype(vb.dtype), _key_rows(vb),
                  preferred_element_type=jnp.float32)
  state = Softmax(m, alpha * rows(s.l) + jnp.sum(p, axis=-1), alpha[..., None] * rows(s.acc) + pv)
  return jax.tree.map(lambda new, old: new.reshape(old.shape), state, s)


def attend_chunk(state: Softmax, q, k, v, qt: Tokens, kt: Tokens, *, causal: bool,
                 window: int | None, scale: float) -> Softmax:
  """Folds every key block of one chunk of keys into the running softmax of every query block.

  Args:
    state: `Softmax` of the query blocks (`init_softmax`, or the result of an earlier chunk).
    q: `[Nq, B, bq, K, G, D]`; k, v: `[Nk, B, bk, K, D]`; qt, kt: blocked `Tokens`.
  """
  def per_query_block(xs):
    s, qb, qtb = xs

    def per_key_block(s, ys):
      kb, vb, ktb = ys

      def update(s):
        mask = token_mask(qtb, ktb, causal=causal, window=window)
        return _softmax_update(s, qb, kb, vb, mask, scale)

      visible = block_visible(qtb, ktb, causal=causal, window=window)
      return jax.lax.cond(visible, update, lambda s: s, s), None

    return jax.lax.scan(per_key_block, s, (k, v, kt))[0]

  state = match_vma(state, q, k, v, qt, kt)
  return jax.lax.map(per_query_block, (state, q, qt))


def finish_softmax(state: Softmax):
  """`(out [Nq, B, K, G, bq, Dv] f32, lse [Nq, B, K, G, bq])`; a query that saw nothing gets
  out = 0 and lse = 0 (its probabilities are masked to zero in the backward anyway)."""
  seen = state.l > 0
  l = jnp.where(seen, state.l, 1.0)
  return state.acc / l[..., None], jnp.where(seen, state.m + jnp.log(l), 0.0)


def attend_chunk_grads(q, k, v, do, lse, delta, qt: Tokens, kt: Tokens, *, causal: bool,
                       window: int | None, scale: float):
  """Gradient contributions of one chunk of keys (FlashAttention-2 backward, Alg. 2).

  Args:
    q, k, v, qt, kt: blocked as in `attend_chunk`; do: `[Nq, B, bq, K, G, Dv]` output cotangent.
    lse: `[Nq, B, K, G, bq]` final log-sum-exp of each query (`finish_softmax`).
    delta: `[Nq, B, K, G, bq]`, `sum(do * out, -1)`.

  Returns:
    `(dq [Nq, B, bq, K, G, D], dk [Nk, B, bk, K, D], dv [Nk, B, bk, K, Dv])`, float32.
  """
  inputs = (q, k, v, do, lse, delta, qt, kt)
  zeros_dq = match_vma(jnp.zeros(q.shape[1:], jnp.float32), inputs)

  def per_key_block(dq, xs):
    kb, vb, ktb = xs

    def per_query_block(dkv, ys):
      qb, dob, lseb, deltab, qtb = ys

      def grads(dkv):
        dk, dv = dkv
        # Tiles are key-major, [B, K, bk, G*bq]: dV = P^T dO and dK = dS^T Q then read them row
        # by row, only dQ = dS K contracts over their leading axis, and no elementwise pass over
        # a tile reads it transposed.
        b, bq, kv_heads, g, _ = qb.shape
        q_rows, do_rows = _query_rows(qb), _query_rows(dob)
        k_rows, v_rows = _key_rows(kb), _key_rows(vb)
        per_query = lambda x: x.reshape(b, kv_heads, 1, g * bq)  # [B, K, G, bq]
        mask = jnp.swapaxes(_query_mask(token_mask(qtb, ktb, causal=causal, window=window), g),
                            2, 3)  # [B, 1, bk, G*bq]
        f32 = dict(preferred_element_type=jnp.float32)
        logits = jnp.einsum("bksd,bknd->bksn", k_rows, q_rows, **f32) * scale
        p = jnp.where(mask, jnp.exp(logits - per_query(lseb)), 0.0)
        dp = jnp.einsum("bksd,bknd->bksn", v_rows, do_rows, **f32)
        ds = p * (dp - per_query(deltab)) * scale
        dv = dv + _key_rows(jnp.einsum("bksn,bknd->bksd", p.astype(dob.dtype), do_rows, **f32))
        dk = dk + _key_rows(jnp.einsum("bksn,bknd->bksd", ds.astype(qb.dtype), q_rows, **f32))
        dq_b = jnp.einsum("bksn,bksd->bknd", ds.astype(kb.dtype), k_rows, **f32)
        dq_b = dq_b.reshape(b, kv_heads, g, bq, -1).transpose(0, 3, 1, 2, 4)  # [B, bq, K, G, D]
        return (dk, dv), dq_b

      visible = block_visible(qtb, ktb, causal=causal, window=window)
      return jax.lax.cond(visible, grads, lambda dkv: (dkv, zeros_dq), dkv)

    zeros_dkv = match_vma((jnp.zeros(kb.shape, jnp.float32), jnp.zeros(vb.shape, jnp.float32)),
                          inputs)
    dkv, dq_blocks = jax.lax.scan(per_query_block, zeros_dkv, (q, do, lse, delta, qt))
    return dq + dq_blocks, dkv

  zeros = match_vma(jnp.zeros(q.shape, jnp.float32), inputs)
  dq, (dk, dv) = jax.lax.scan(per_key_block, zeros, (k, v, kt))
  return dq, dk, dv


def output_delta(do_blocks, out_blocks) -> jnp.ndarray:
  """`sum(do * out, -1)` in the statistics layout `[Nq, B, K, G, bq]` (FlashAttention-2's D)."""
  delta = jnp.sum(do_blocks.astype(jnp.float32) * out_blocks.astype(jnp.float32), axis=-1)
  return jnp.moveaxis(delta, 2, -1)


def stats_to_tokens(out):
  """`[Nq, B, K, G, bq, Dv] -> [Nq, B, bq, K, G, Dv]`, the query-block layout."""
  return jnp.moveaxis(out, 4, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _blockwise(q, k, v, qt, kt, causal, window, scale, block_q, block_k):
  return _blockwise_fwd(q, k, v, qt, kt, causal, window, scale, block_q, block_k)[0]


def _blockwise_fwd(q, k, v, qt, kt, causal, window, scale, block_q, block_k):
  """`q [B, T, K, G, D]`, `k, v [B, S, K, D]` -> `out [B, T, K, G, Dv]` in q's dtype."""
  qb, qtb = split_blocks((q, qt), block_q)
  kb, vb, ktb = split_blocks((k, v, kt), block_k)
  state = attend_chunk(init_softmax(qb, v.shape[-1]), qb, kb, vb, qtb, ktb, causal=causal,
                       window=window, scale=scale)
  out, lse = finish_softmax(state)
  out = merge_blocks(stats_to_tokens(out), q.shape[1]).astype(q.dtype)
  return out, (q, k, v, qt, kt, out, lse)


def blockwise_grads(q, k, v, qt: Tokens, kt: Tokens, out, lse, do, *, causal: bool,
                    window: int | None, scale: float, block_q: int, block_k: int):
  """FlashAttention-2's backward from the forward's output and log-sum-exp.

  Args:
    q, out, do: `[B, T, K, G, D | Dv]` (grouped query heads); k, v: `[B, S, K, D | Dv]`.
    qt, kt: the `Tokens` of each side; lse: `[Nq, B, K, G, bq]` as `finish_softmax` gives it.

  Returns:
    `(dq, dk, dv)` in the dtypes of q, k, v.
  """
  qb, qtb, dob, outb = split_blocks((q, qt, do, out), block_q)
  kb, vb, ktb = split_blocks((k, v, kt), block_k)
  dq, dk, dv = attend_chunk_grads(qb, kb, vb, dob, lse, output_delta(dob, outb), qtb, ktb,
                                  causal=causal, window=window, scale=scale)
  dq = merge_blocks(dq, q.shape[1]).astype(q.dtype)
  dk, dv = merge_blocks((dk, dv), k.shape[1])
  return dq, dk.astype(k.dtype), dv.astype(v.dtype)


def _blockwise_bwd(causal, window, scale, block_q, block_k, residuals, do):
  q, k, v, qt, kt, out, lse = residuals
  grads = blockwise_grads(q, k, v, qt, kt, out, lse, do, causal=causal, window=window,
                          scale=scale, block_q=block_q, block_k=block_k)
  return grads + (None, None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q, k, v, q_tokens: Tokens, kv_tokens: Tokens, *, causal: bool,
                        window: int | None, scale: float, block_q: int, block_k: int):
  """Blockwise attention on `q [B, T, H, D]`, `k, v [B, S, K, Dv]`; returns `[B, T, H, Dv]`."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
  out = _blockwise(qg, k, v, q_tokens, kv_tokens, causal, window, scale, block_q, block_k)
  return out.reshape(b, t, h, v.shape[-1])


def _blocks(length: int, block: int) -> list[tuple[int, int]]:
  """`(first, last)` positions of the valid tokens of each block of `split_blocks`."""
  return [(lo, min(lo + block, length) - 1) for lo in range(0, length, block)]


def attention_flops(batch: int, q_len: int, kv_len: int, heads: int, head_dim: int,
                    value_dim: int, *, impl: str, causal: bool = True, window: int | None = None,
                    block_q: int = 512, block_k: int = 512) -> int:
  """Forward matmul FLOPs of `attention` on one document per row (no segment_ids, positions
  0, 1, ...): `2 * pairs * (head_dim + value_dim)` per head, where `pairs` counts the score entries
  the chosen form computes. "naive" computes all `q_len * kv_len` scores (masked ones included, as
  PaLM's model FLOPs count them); "blockwise" computes full `block_q x block_k` tiles for the block
  pairs that `block_visible` does not skip (padding included)."""
  if impl == "naive":
    pairs = q_len * kv_len
  elif impl == "blockwise":
    visible = lambda q, k: ((not causal or k[0] <= q[1]) and
                            (window is None or (q[0] - k[1] < window and k[0] - q[1] < window)))
    pairs = block_q * block_k * sum(visible(q, k) for q in _blocks(q_len, block_q)
                                    for k in _blocks(kv_len, block_k))
  else:
    raise ValueError(f"unknown attention impl {impl!r}; use 'naive' or 'blockwise'")
  return 2 * batch * heads * pairs * (head_dim + value_dim)


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
    block_q, block_k: block sizes of the blockwise form (need not divide T or S).
    q_positions, kv_positions: `[B, T]` / `[B, S]` absolute positions used by the causal and window
      masks (default `arange`); a decode step passes its cache positions here.

  Returns:
    `[B, T, H, Dv]` in q's dtype. A query that sees no key gets zeros.
  """
  if (q.ndim != 4 or k.ndim != 4 or v.shape[:3] != k.shape[:3]
      or (q.shape[0], q.shape[3]) != (k.shape[0], k.shape[3])):  # batch and key width
    raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: pass q [B, T, H, D], k [B, S, K, D] "
                     "and v [B, S, K, Dv]")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} not a multiple of kv heads {k.shape[2]}")
  if segment_ids is not None and q.shape[1] != k.shape[1]:
    raise ValueError(f"segment_ids need self-attention (T == S), got T={q.shape[1]} "
                     f"S={k.shape[1]}; drop segment_ids or pass equal lengths")
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  q_positions = _default_positions(q, q_positions)
  kv_positions = _default_positions(k, kv_positions)
  if impl == "naive":
    mask = attention_mask(q_positions, kv_positions, causal=causal, window=window,
                          q_segment_ids=segment_ids, kv_segment_ids=segment_ids)
    return naive_attention(q, k, v, mask, scale)
  if impl == "blockwise":
    if block_q < 1 or block_k < 1:
      raise ValueError(f"block_q={block_q}, block_k={block_k}: block sizes must be >= 1")
    return blockwise_attention(q, k, v, make_tokens(q_positions, segment_ids),
                               make_tokens(kv_positions, segment_ids), causal=causal,
                               window=window, scale=scale, block_q=block_q, block_k=block_k)
  raise ValueError(f"unknown attention impl {impl!r}; use 'naive' or 'blockwise'")
