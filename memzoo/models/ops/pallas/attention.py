"""Pallas forward of blockwise softmax attention (`ops/attention.py` with `impl="blockwise"`, one
document per row): FlashAttention-2's forward (Dao 2023, Alg. 1).

One program per (batch row, query head, query block) keeps the block's online-softmax state
(running max m, normaliser l, unnormalised output) on chip and walks only the key blocks the
causal / sliding-window mask can reach, so masked-out tiles cost nothing. GQA: query head h reads
kv head h // (H // K) through the BlockSpec index map, no copies. The log-sum-exp per query is
returned for a backward pass or for merging partial results (ring attention).

`flash_attention` is the differentiable form for training: this kernel forward, and the JAX
FlashAttention-2 backward of `ops/attention.py` (`blockwise_grads`) from its output and lse.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from memzoo.models.ops import chunking
from memzoo.models.ops.attention import attention_mask, blockwise_grads, make_tokens, split_blocks

_MASKED = -1e30


def _key_blocks(first_q, last_q, *, block_k: int, kv_blocks: int, causal: bool,
                window: int | None):
  """`[lo, hi)`: the key blocks that queries at positions first_q..last_q may see."""
  lo, hi = 0, kv_blocks
  if causal:
    hi = jnp.minimum(hi, last_q // block_k + 1)
  if window is not None:
    lo = jnp.maximum(0, (first_q - window + 1) // block_k)
    if not causal:
      hi = jnp.minimum(hi, (last_q + window - 1) // block_k + 1)
  return lo, hi


def _kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, block_q: int, block_k: int, kv_len: int,
            kv_blocks: int, causal: bool, window: int | None, scale: float):
  """Refs of one (row, head, query block): q `[bq, D]`, k `[S', D]`, v `[S', Dv]`; writes o
  `[bq, Dv]` and lse `[bq, 1]`."""
  first_q = pl.program_id(2) * block_q
  q = q_ref[...]
  q_pos = first_q + jnp.arange(block_q)

  def body(j, carry):
    m, l, acc = carry
    cols = pl.ds(j * block_k, block_k)
    kv_pos = j * block_k + jnp.arange(block_k)
    visible = attention_mask(q_pos[None], kv_pos[None], causal=causal, window=window)[0]
    visible &= kv_pos[None, :] < kv_len                     # padding keys
    s = jnp.dot(q, k_ref[cols, :].T, preferred_element_type=jnp.float32) * scale
    s = jnp.where(visible, s, _MASKED)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
    p = jnp.where(visible, jnp.exp(s - m_new), 0.0)
    correction = jnp.exp(m - m_new)
    v = v_ref[cols, :]
    acc = correction * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, correction * l + jnp.sum(p, axis=-1, keepdims=True), acc

  lo, hi = _key_blocks(first_q, first_q + block_q - 1, block_k=block_k, kv_blocks=kv_blocks,
                       causal=causal, window=window)
  init = (jnp.full((block_q, 1), _MASKED, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
          jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32))
  m, l, acc = jax.lax.fori_loop(lo, hi, body, init)
  o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)).astype(o_ref.dtype)  # a query seeing no key: 0
  lse_ref[...] = m + jnp.log(l)


def attention_pallas(q, k, v, *, causal: bool = True, window: int | None = None,
                     scale: float | None = None, block_q: int = 128, block_k: int = 128,
                     interpret: bool = False):
  """`attention(q, k, v, causal=..., window=..., impl="blockwise")` as one Pallas kernel.

  Args:
    q: `[B, T, H, D]`; k, v: `[B, S, K, D | Dv]`, K divides H (GQA). Positions are 0..T-1 for
      queries and 0..S-1 for keys.
    causal, window: the masks of `ops.attention.attention_mask`.
    scale: logit scale, default `D ** -0.5`.
    block_q, block_k: query / key block sizes; T and S need not be multiples.
    interpret: run the kernel in the Pallas interpreter (CPU; tests).

  Returns:
    `(o [B, T, H, Dv] in q's dtype, lse [B, T, H] float32)`: lse is the log-sum-exp of each
    query's visible scaled logits (-inf, and o = 0, for a query that sees no key).
  """
  b, t, h, d = q.shape
  s, kv_heads, dv = k.shape[1], k.shape[2], v.shape[-1]
  if k.shape != (b, s, kv_heads, d) or v.shape[:3] != k.shape[:3] or h % kv_heads:
    raise ValueError(f"q, k, v: expected q [B, T, H, D], k [B, S, K, D], v [B, S, K, Dv] with K "
                     f"dividing H; got q {q.shape}, k {k.shape}, v {v.shape}")
  for name, size in (("block_q", block_q), ("block_k", block_k)):
    if not isinstance(size, int) or size < 1:
      raise ValueError(f"{name}: got {size!r}; use a positive int such as 128")
  scale = d ** -0.5 if scale is None else scale
  q_blocks, kv_blocks = -(-t // block_q), -(-s // block_k)
  heads_first = lambda x, block: jnp.moveaxis(chunking.pad_time(x, block), 2, 1)
  groups = h // kv_heads

  kernel = functools.partial(_kernel, block_q=block_q, block_k=block_k, kv_len=s,
                             kv_blocks=kv_blocks, causal=causal, window=window, scale=scale)
  query_block = lambda width: pl.BlockSpec((None, None, block_q, width),
                                           lambda i, j, n: (i, j, n, 0))
  all_keys = lambda width: pl.BlockSpec((None, None, kv_blocks * block_k, width),
                                        lambda i, j, n: (i, j // groups, 0, 0))
  o, lse = pl.pallas_call(
      kernel, grid=(b, h, q_blocks),
      in_specs=[query_block(d), all_keys(d), all_keys(dv)],
      out_specs=[query_block(dv), query_block(1)],
      out_shape=[jax.ShapeDtypeStruct((b, h, q_blocks * block_q, dv), q.dtype),
                 jax.ShapeDtypeStruct((b, h, q_blocks * block_q, 1), jnp.float32)],
      interpret=interpret)(heads_first(q, block_q), heads_first(k, block_k),
                           heads_first(v, block_k))
  return jnp.moveaxis(o, 1, 2)[:, :t], jnp.moveaxis(lse[..., 0], 1, 2)[:, :t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def flash_attention(q, k, v, causal: bool = True, window: int | None = None,
                    scale: float | None = None, block_q: int = 128, block_k: int = 128,
                    interpret: bool = False):
  """`attention_pallas(...)[0]`, differentiable: the gradient runs `ops.attention`'s blockwise
  backward (recomputing the probabilities block by block from the kernel's lse). Arguments as
  `attention_pallas`, positionally."""
  return attention_pallas(q, k, v, causal=causal, window=window, scale=scale, block_q=block_q,
                          block_k=block_k, interpret=interpret)[0]


def _flash_fwd(q, k, v, causal, window, scale, block_q, block_k, interpret):
  o, lse = attention_pallas(q, k, v, causal=causal, window=window, scale=scale, block_q=block_q,
                            block_k=block_k, interpret=interpret)
  return o, (q, k, v, o, lse)


def _flash_bwd(causal, window, scale, block_q, block_k, interpret, residuals, do):
  del interpret
  q, k, v, o, lse = residuals
  b, t, h, d = q.shape
  groups = (b, t, k.shape[2], h // k.shape[2])
  grouped = lambda x: x.reshape(groups + x.shape[-1:])
  tokens = lambda length: make_tokens(jnp.broadcast_to(jnp.arange(length), (b, length)))
  # [B, T, H] -> the statistics layout [Nq, B, K, G, bq]; a query that saw no key has lse -inf,
  # and finish_softmax's 0 in its place (its probabilities are masked to zero either way).
  lse = split_blocks(jnp.where(jnp.isfinite(lse), lse, 0.0).reshape(groups), block_q)
  dq, dk, dv = blockwise_grads(
      grouped(q), k, v, tokens(t), tokens(k.shape[1]), grouped(o), jnp.moveaxis(lse, 2, -1),
      grouped(do), causal=causal, window=window, scale=d ** -0.5 if scale is None else scale,
      block_q=block_q, block_k=block_k)
  return dq.reshape(q.shape), dk, dv


flash_attention.defvjp(_flash_fwd, _flash_bwd)
