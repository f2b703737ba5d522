"""Pallas forward of the chunked linear attention with an optional scalar decay per head
(`ops/linear_attention.py` with `log_decay [B, T, H]` or None, one document per row).

One program per (batch row, head) walks the chunks in order, keeping the `[Dk, Dv]` float32 state
on chip. Per chunk of C tokens with G the in-chunk cumulative log decay (computed outside, a cheap
cumsum), as in `ops/linear_recurrence.py`:

  o     = scale [ (exp(G) q) S  +  ((q k^T) * exp(G_i - G_j) [j <= i]) v ]     (intra-chunk + state)
  S    <- exp(G_C) S  +  (exp(G_C - G) k)^T v                                   (state pass)

Every exponent is <= 0 for decays <= 0. T is padded with zeros to a multiple of C (zero k, v and
g leave the state unchanged). Forward only: training uses the JAX op (its chunk form has the
custom-free autodiff the rest of memzoo relies on).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from memzoo.models.ops import chunking


def _kernel(q_ref, k_ref, v_ref, g_ref, s0_ref, o_ref, s_ref, *, chunk: int, chunks: int,
            scale: float):
  """Refs of one (row, head): q, k `[T, Dk]`, v `[T, Dv]`, g `[T, 1]` (in-chunk cumulative),
  s0 / s `[Dk, Dv]`; writes o `[T, Dv]` and the final state."""
  causal = jnp.arange(chunk)[:, None] >= jnp.arange(chunk)[None, :]

  def body(i, state):
    rows = pl.ds(i * chunk, chunk)
    q, k, v = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :]
    g = g_ref[rows, :]                                                    # [C, 1]
    end = g[chunk - 1:, :]                                                # [1, 1]
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, g - g.T, 0.0)), 0.0)
    scores = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * decay
    o = (jnp.dot(q * jnp.exp(g), state, preferred_element_type=jnp.float32)
         + jnp.dot(scores, v, preferred_element_type=jnp.float32))
    o_ref[rows, :] = (scale * o).astype(o_ref.dtype)
    write = (k * jnp.exp(end - g)).T
    return state * jnp.exp(end) + jnp.dot(write, v, preferred_element_type=jnp.float32)

  s_ref[...] = jax.lax.fori_loop(0, chunks, body, s0_ref[...].astype(jnp.float32))


def linear_attention_pallas(q, k, v, *, log_decay=None, scale: float | None = None,
                            initial_state=None, chunk_size: int = 64, interpret: bool = False):
  """`linear_attention(q, k, v, log_decay=..., mode="chunk")` as one Pallas kernel.

  Args:
    q, k: `[B, T, H, Dk]`; v: `[B, T, H, Dv]`.
    log_decay: None or `[B, T, H]` (scalar gate per head), expected <= 0.
    scale: output scale, default `Dk ** -0.5`.
    initial_state: `[B, H, Dk, Dv]`, zeros if None.
    chunk_size: tokens per chunk; T need not be a multiple.
    interpret: run the kernel in the Pallas interpreter (CPU; tests).

  Returns:
    `(o [B, T, H, Dv] in q's dtype, final_state [B, H, Dk, Dv] float32)`.
  """
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  if k.shape != q.shape or v.shape[:3] != (b, t, h):
    raise ValueError(f"q, k, v: expected q, k [B, T, H, Dk] and v [B, T, H, Dv]; got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}")
  if log_decay is not None and log_decay.shape != (b, t, h):
    raise ValueError(f"log_decay: shape {log_decay.shape}; this kernel takes a scalar gate per "
                     f"head, [B, T, H] = {(b, t, h)} (use ops.linear_attention for vector gates)")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size: got {chunk_size!r}; use a positive int such as 64")
  scale = dk ** -0.5 if scale is None else scale
  state = (jnp.zeros((b, h, dk, dv), jnp.float32) if initial_state is None
           else initial_state.astype(jnp.float32))
  g = jnp.zeros((b, t, h), jnp.float32) if log_decay is None else log_decay.astype(jnp.float32)
  chunks = -(-t // chunk_size)
  padded = chunks * chunk_size
  # [B, H, T', D] with T' a multiple of C; G = cumulative g inside each chunk.
  heads_first = lambda x: jnp.moveaxis(chunking.pad_time(x, chunk_size), 2, 1)
  q_, k_, v_ = (heads_first(x) for x in (q, k, v))
  cum = jnp.cumsum(heads_first(g).reshape(b, h, chunks, chunk_size), -1)
  cum = cum.reshape(b, h, padded, 1)

  block = lambda *tail: pl.BlockSpec((None, None) + tail, lambda i, j: (i, j) + (0,) * len(tail))
  kernel = functools.partial(_kernel, chunk=chunk_size, chunks=chunks, scale=scale)
  o, state = pl.pallas_call(
      kernel, grid=(b, h),
      in_specs=[block(padded, dk), block(padded, dk), block(padded, dv), block(padded, 1),
                block(dk, dv)],
      out_specs=[block(padded, dv), block(dk, dv)],
      out_shape=[jax.ShapeDtypeStruct((b, h, padded, dv), q.dtype),
                 jax.ShapeDtypeStruct((b, h, dk, dv), jnp.float32)],
      interpret=interpret)(q_, k_, v_, cum, state)
  return jnp.moveaxis(o, 1, 2)[:, :t], state
