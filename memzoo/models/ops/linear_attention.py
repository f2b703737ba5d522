"""Linear attention with optional scalar or vector decay (retention, GLA, Mamba2-style gates)."""

import jax.numpy as jnp

from memzoo.models.ops import linear_recurrence


def linear_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *,
                     log_decay: jnp.ndarray | None = None, scale: float | None = None,
                     initial_state: jnp.ndarray | None = None,
                     segment_ids: jnp.ndarray | None = None, mode: str = "chunk",
                     chunk_size: int = 64) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Causal (gated) linear attention: `S_t = exp(g_t) S_{t-1} + k_t v_t^T`, `o_t = scale q_t^T S_t`.

  The current token is included in its own output. The math of every form is in
  `ops/linear_recurrence.py`.

  Args:
    q, k: `[B, T, H, Dk]`.
    v: `[B, T, H, Dv]`.
    log_decay: g, None (no decay), `[B, T, H]` (one gate per head: retention, Mamba2 / simple GLA)
      or `[B, T, H, Dk]` (vector gate: GLA; row i of S decays by exp(g_t[i])). Expected <= 0.
    scale: output scale, default `Dk ** -0.5`.
    initial_state: `[B, H, Dk, Dv]`, zeros if None.
    segment_ids: `[B, T]` ints; the state resets to zero wherever the id changes (packed documents;
      the initial state belongs to the first document).
    mode: "chunk" (chunkwise parallel, `lax.scan` over chunks), "recurrent" (token by token) or
      "parallel" (one chunk holding the whole sequence, quadratic in T).
    chunk_size: tokens per chunk of the chunk form; T need not be a multiple.

  Returns:
    `(o [B, T, H, Dv] in q's dtype, final_state [B, H, Dk, Dv] float32)`. All arithmetic is float32.
  """
  return linear_recurrence.run(q, k, v, None, log_decay=log_decay, scale=scale,
                               initial_state=initial_state, segment_ids=segment_ids, mode=mode,
                               chunk_size=chunk_size, modes=("chunk", "recurrent", "parallel"))


def linear_attention_flops(batch: int, length: int, heads: int, dk: int, dv: int, *,
                           gate: str | None = None, mode: str = "chunk",
                           chunk_size: int = 64) -> int:
  """Forward matmul FLOPs of `linear_attention` (see `linear_recurrence.flops`)."""
  return linear_recurrence.flops(batch, length, heads, dk, dv, delta=False,
                                 gate=gate, mode=mode, chunk_size=chunk_size)
