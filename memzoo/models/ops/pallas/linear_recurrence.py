"""Pallas forward of the chunked linear recurrence (`ops/linear_recurrence.py`) with a scalar decay
per head and one document per row: the state-passing kernel behind `linear_attention_pallas` and
`delta_rule_pallas`.

One program per (batch row, head) walks the chunks in order, keeping the `[Dk, Dv]` float32 state
on chip. Per chunk of C tokens with G the in-chunk cumulative log decay (computed outside, a cheap
cumsum):

  u     = v                    (linear attention)
  u     = v' - W S             (delta rule: v' = U', W from the UT transform, computed outside)
  o     = scale [ (exp(G) q) S  +  ((q k^T) * exp(G_i - G_j) [j <= i]) u ]     (state + intra-chunk)
  S    <- exp(G_C) S  +  (exp(G_C - G) k)^T u                                   (state pass)

Every exponent is <= 0 for decays <= 0. T is padded with zeros to a multiple of C (zero k, v, W and
g leave the state unchanged). The split follows fla's chunked kernels: everything that does not
depend on the state (the UT transform) is batched over chunks outside; only this pass is
sequential. Forward only: training uses the JAX ops (their chunk forms have the custom-free
autodiff the rest of memzoo relies on).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from memzoo.models.ops import chunking
from memzoo.models.ops.linear_recurrence import check_arguments


def _kernel(*refs, chunk: int, chunks: int, scale: float, delta: bool):
  """Refs of one (row, head): q, k (and w) `[T, Dk]`, v `[T, Dv]`, g `[T, 1]` (in-chunk
  cumulative), s0 / s `[Dk, Dv]`; writes o `[T, Dv]` and the final state."""
  if delta:
    q_ref, k_ref, v_ref, w_ref, g_ref, s0_ref, o_ref, s_ref = refs
  else:
    (q_ref, k_ref, v_ref, g_ref, s0_ref, o_ref, s_ref), w_ref = refs, None
  causal = jnp.arange(chunk)[:, None] >= jnp.arange(chunk)[None, :]

  def body(i, state):
    rows = pl.ds(i * chunk, chunk)
    q, k, u = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :]
    if w_ref is not None:
      u = u - jnp.dot(w_ref[rows, :], state, preferred_element_type=jnp.float32)
    g = g_ref[rows, :]                                                    # [C, 1]
    end = g[chunk - 1:, :]                                                # [1, 1]
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, g - g.T, 0.0)), 0.0)
    scores = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * decay
    o = (jnp.dot(q * jnp.exp(g), state, preferred_element_type=jnp.float32)
         + jnp.dot(scores, u, preferred_element_type=jnp.float32))
    o_ref[rows, :] = (scale * o).astype(o_ref.dtype)
    write = (k * jnp.exp(end - g)).T
    return state * jnp.exp(end) + jnp.dot(write, u, preferred_element_type=jnp.float32)

  s_ref[...] = jax.lax.fori_loop(0, chunks, body, s0_ref[...].astype(jnp.float32))


def chunked_recurrence(q, k, v, w, log_decay, state, *, scale: float, chunk_size: int,
                       out_dtype, interpret: bool):
  """Runs the kernel over every (row, head).

  Args:
    q, k: `[B, T, H, Dk]`; v: `[B, T, H, Dv]`; w: None (linear attention) or `[B, T, H, Dk]`.
    log_decay: `[B, T, H]` float32, <= 0 (zeros: no decay).
    state: `[B, H, Dk, Dv]` float32, the state entering the sequence.
    scale, chunk_size: output scale; tokens per chunk (T need not be a multiple).
    out_dtype: dtype of o.
    interpret: run in the Pallas interpreter (CPU; tests).

  Returns:
    `(o [B, T, H, Dv], final_state [B, H, Dk, Dv] float32)`.
  """
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  chunks = -(-t // chunk_size)
  padded = chunks * chunk_size
  # [B, H, T', D] with T' a multiple of C; G = cumulative g inside each chunk.
  heads_first = lambda x: jnp.moveaxis(chunking.pad_time(x, chunk_size), 2, 1)
  cum = jnp.cumsum(heads_first(log_decay).reshape(b, h, chunks, chunk_size), -1)
  tensors = [heads_first(x) for x in (q, k, v) + (() if w is None else (w,))]

  block = lambda *tail: pl.BlockSpec((None, None) + tail, lambda i, j: (i, j) + (0,) * len(tail))
  in_specs = [block(padded, dk), block(padded, dk), block(padded, dv)]
  in_specs += [] if w is None else [block(padded, dk)]
  kernel = functools.partial(_kernel, chunk=chunk_size, chunks=chunks, scale=scale,
                             delta=w is not None)
  o, state = pl.pallas_call(
      kernel, grid=(b, h),
      in_specs=in_specs + [block(padded, 1), block(dk, dv)],
      out_specs=[block(padded, dv), block(dk, dv)],
      out_shape=[jax.ShapeDtypeStruct((b, h, padded, dv), out_dtype),
                 jax.ShapeDtypeStruct((b, h, dk, dv), jnp.float32)],
      interpret=interpret)(*tensors, cum.reshape(b, h, padded, 1), state)
  return jnp.moveaxis(o, 1, 2)[:, :t], state


def prepare(q, k, v, beta, *, log_decay, initial_state, scale, chunk_size):
  """What the wrappers share: the JAX ops' argument checks (`linear_recurrence.check_arguments`)
  plus this kernel's scalar-gate limit, then the defaults.

  Returns `(log_decay [B, T, H] float32, state [B, H, Dk, Dv] float32, scale)`."""
  check_arguments(q, k, v, beta, log_decay=log_decay, initial_state=initial_state,
                  segment_ids=None, chunk_size=chunk_size)
  b, t, h, dk = q.shape
  if log_decay is not None and log_decay.shape != (b, t, h):
    raise ValueError(f"log_decay: shape {log_decay.shape}; the Pallas kernels take a scalar gate "
                     f"per head, [B, T, H] = {(b, t, h)} (use the JAX ops for vector gates)")
  g = (jnp.zeros((b, t, h), jnp.float32) if log_decay is None
       else log_decay.astype(jnp.float32))
  state = (jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32) if initial_state is None
           else initial_state.astype(jnp.float32))
  return g, state, dk ** -0.5 if scale is None else scale
