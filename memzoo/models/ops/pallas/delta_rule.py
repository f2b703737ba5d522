"""Pallas forward of the chunked (gated) delta rule (`ops/delta_rule.py` with `log_decay [B, T, H]`
or None, one document per row).

The UT transform `[W, U'] = (I + diag(beta) M)^{-1} diag(beta) [exp(G) K, V]` of every chunk does
not depend on the state: it runs batched over all chunks in JAX (`linear_recurrence.ut_transform`,
the same code as the JAX op). The state pass, `u = U' - W S` then the linear-attention update, is
the kernel of `pallas/linear_recurrence.py`.
"""

import jax.numpy as jnp

from memzoo.models.ops import chunking
from memzoo.models.ops.linear_recurrence import ut_transform
from memzoo.models.ops.pallas.linear_recurrence import chunked_recurrence, prepare


def delta_rule_pallas(q, k, v, beta, *, log_decay=None, scale: float | None = None,
                      initial_state=None, chunk_size: int = 64, interpret: bool = False):
  """`delta_rule(q, k, v, beta, log_decay=..., mode="chunk")` with the state pass as a Pallas
  kernel: `S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`, `o_t = scale q_t^T S_t`.

  Args:
    q, k: `[B, T, H, Dk]` (k L2-normalised by the caller); v: `[B, T, H, Dv]`.
    beta: `[B, T, H]` writing strength.
    log_decay: None or `[B, T, H]` (Gated DeltaNet's scalar gate), expected <= 0.
    scale: output scale, default `Dk ** -0.5`.
    initial_state: `[B, H, Dk, Dv]`, zeros if None.
    chunk_size: tokens per chunk; T need not be a multiple.
    interpret: run the kernel in the Pallas interpreter (CPU; tests).

  Returns:
    `(o [B, T, H, Dv] in q's dtype, final_state [B, H, Dk, Dv] float32)`.
  """
  g, state, scale = prepare(q, k, v, beta, log_decay=log_decay, initial_state=initial_state,
                            scale=scale, chunk_size=chunk_size)
  q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
  rows = chunking.heads_to_rows
  c, _ = chunking.split_chunks({"k": rows(k32), "v": rows(v.astype(jnp.float32)),
                                "beta": rows(beta.astype(jnp.float32)), "g": rows(g)[..., None]},
                               chunk_size)
  w, u = ut_transform(c["k"], c["v"], c["beta"], chunking.prefix_sum(c["g"]), 1.0, True)
  w, u = (chunking.rows_to_heads(x, q.shape[2])
          for x in chunking.merge_chunks((w, u), q.shape[1]))
  return chunked_recurrence(q32, k32, u, w, g, state, scale=scale, chunk_size=chunk_size,
                            out_dtype=q.dtype, interpret=interpret)
