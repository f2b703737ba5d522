"""The (gated) delta rule: DeltaNet, Gated DeltaNet, and vector-gated (KDA-style) variants."""

import jax.numpy as jnp

from memzoo.models.ops import linear_recurrence


def delta_rule(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, beta: jnp.ndarray, *,
               log_decay: jnp.ndarray | None = None, scale: float | None = None,
               initial_state: jnp.ndarray | None = None, segment_ids: jnp.ndarray | None = None,
               mode: str = "chunk", chunk_size: int = 64) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`, `o_t = scale q_t^T S_t`.

  a_t = exp(g_t) (1 without decay). The chunk form uses the UT / WY representation (a unit
  lower-triangular system per chunk, see `ops/linear_recurrence.py`). The recurrence is
  contractive for `||k_t|| <= 1`, `0 <= beta_t <= 2`: callers L2-normalise k and squash beta.

  Args:
    q, k: `[B, T, H, Dk]`.
    v: `[B, T, H, Dv]`.
    beta: `[B, T, H]` writing strength.
    log_decay: g, None, `[B, T, H]` (Gated DeltaNet) or `[B, T, H, Dk]` (vector gate applied to the
      rows of S before the delta update: `S_t = (I - beta k k^T) diag(a_t) S_{t-1} + beta k v^T`).
    scale: output scale, default `Dk ** -0.5`.
    initial_state: `[B, H, Dk, Dv]`, zeros if None.
    segment_ids: `[B, T]` ints; the state resets to zero wherever the id changes.
    mode: "chunk" or "recurrent".
    chunk_size: tokens per chunk of the chunk form; T need not be a multiple.

  Returns:
    `(o [B, T, H, Dv] in q's dtype, final_state [B, H, Dk, Dv] float32)`. All arithmetic is float32.
  """
  return linear_recurrence.run(q, k, v, beta, log_decay=log_decay, scale=scale,
                               initial_state=initial_state, segment_ids=segment_ids, mode=mode,
                               chunk_size=chunk_size, modes=("chunk", "recurrent"))


def delta_rule_flops(batch: int, length: int, heads: int, dk: int, dv: int, *,
                     gate: str | None = None, mode: str = "chunk", chunk_size: int = 64) -> int:
  """Forward matmul FLOPs of `delta_rule` (see `linear_recurrence.flops`)."""
  return linear_recurrence.flops(batch, length, heads, dk, dv, delta=True,
                                 gate=gate, mode=mode, chunk_size=chunk_size)
