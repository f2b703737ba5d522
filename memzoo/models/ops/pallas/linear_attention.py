"""Pallas forward of the chunked linear attention with an optional scalar decay per head
(`ops/linear_attention.py` with `log_decay [B, T, H]` or None, one document per row); the kernel is
`pallas/linear_recurrence.py` with u = v."""

from memzoo.models.ops.pallas.linear_recurrence import chunked_recurrence, prepare


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
  g, state, scale = prepare(q, k, v, None, log_decay=log_decay, initial_state=initial_state,
                            scale=scale, chunk_size=chunk_size)
  return chunked_recurrence(q, k, v, None, g, state, scale=scale, chunk_size=chunk_size,
                            out_dtype=q.dtype, interpret=interpret)
