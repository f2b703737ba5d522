"""Routed recurrent memories (MoM, Du et al. 2025, arXiv 2502.13685): M memories, each a linear
recurrence (`linear_attention` or `delta_rule`) that is written only at the tokens routed to it, in
order; the output is the routing-weighted sum of their reads.

Two forms, the same function (no dynamic shapes under jit in either):

  masked    every memory runs over all T tokens, the M memories stacked on the head axis (one op
            call with M H heads). At a token not routed to a memory its key, beta and log-decay
            are zero: the write `k u^T` vanishes and the decay is exp(0) = 1, so the state passes
            through exactly (bit for bit in the recurrent form; in the chunk form the zero rows
            make the token drop out of the UT system and of every score, see
            `ops/linear_recurrence.py`). Carries states in and out: prefill and decode use it.
            Cost: M T tokens per head.
  gathered  each row's (token, memory) assignments are sorted by (memory, position), so every
            memory's tokens form one contiguous run, in order; one op call runs over the P T
            sorted assignments with a reset at every run (and document) boundary, and the reads
            are put back in token order. Cost: P T tokens per head (P = slots per token, e.g.
            top-2 + a shared memory = 3, against M = 5 for the masked form) plus two gathers and
            a sort. No state in or out (a run would need its memory's state at its start).
"""

import jax
import jax.numpy as jnp

from memzoo.models.ops.segments import segment_starts

FORMS = ("masked", "gathered")


def mixture_of_memories(op, q, k, v, *, beta=None, log_decay=None, memories, weights,
                        initial_state=None, segment_ids=None, form="masked", mode="chunk",
                        chunk_size=64):
  """`o_t = sum_p weights[t, p] * read of memory memories[t, p] at t`, memories written only at
  the tokens routed to them.

  Args:
    op: `delta_rule` or `linear_attention` (ops/), called with keyword arguments.
    q: `[B, T, H, Dk]`, shared by the memories.
    k: `[B, T, M, H, Dk]`, each memory's keys; v: `[B, T, M, H, Dv]`.
    beta: `[B, T, M, H]` for the delta rule, None for linear attention.
    log_decay: `[B, T, M, H]` scalar gate per head, or None (no decay).
    memories: `[B, T, P]` int, the P distinct memories each token is routed to.
    weights: `[B, T, P]`, their weights.
    initial_state: `[B, M, H, Dk, Dv]` (masked form only), zeros if None.
    segment_ids: `[B, T]`; every memory's state resets where the id changes.
    form: "masked" or "gathered" (module doc).
    mode, chunk_size: the op's form ("chunk" / "recurrent") and chunk length.

  Returns:
    `(o [B, T, H, Dv] in q's dtype, final_state [B, M, H, Dk, Dv] float32, or None for the
    gathered form)`.
  """
  if form not in FORMS:
    raise ValueError(f"form: got {form!r}; use one of {', '.join(map(repr, FORMS))}")
  if k.ndim != 5 or k.shape[:2] != q.shape[:2] or k.shape[3:] != q.shape[2:]:
    raise ValueError(f"k: shape {k.shape} is not [B, T, M, H, Dk] for q {q.shape}; "
                     "give every memory its own keys on axis 2")
  if memories.shape != weights.shape or memories.shape[:2] != q.shape[:2]:
    raise ValueError(f"memories / weights: shapes {memories.shape} / {weights.shape}; "
                     f"pass both as [B, T, P] with [B, T] = {q.shape[:2]}")
  args = dict(op=op, q=q, k=k, v=v, beta=beta, log_decay=log_decay, memories=memories,
              weights=weights, segment_ids=segment_ids, mode=mode, chunk_size=chunk_size)
  if form == "masked":
    return _masked(**args, initial_state=initial_state)
  if initial_state is not None:
    raise ValueError("initial_state: the gathered form starts every memory from zero; "
                     "use form='masked' to continue from a state")
  return _gathered(**args), None


def _op_inputs(q, k, v, beta, log_decay):
  inputs = {"q": q, "k": k, "v": v}
  if beta is not None:
    inputs["beta"] = beta
  if log_decay is not None:
    inputs["log_decay"] = log_decay
  return inputs


def _masked(op, q, k, v, beta, log_decay, memories, weights, initial_state, segment_ids, mode,
            chunk_size):
  b, t, m, h, dk = k.shape
  dv = v.shape[-1]
  chosen = memories[..., None] == jnp.arange(m)  # [B, T, P, M]
  routed = jnp.any(chosen, axis=2)[..., None]  # [B, T, M, 1]
  dense_weights = jnp.einsum("btp,btpm->btm", weights.astype(jnp.float32),
                             chosen.astype(jnp.float32))
  keep = lambda a: None if a is None else jnp.where(routed, a, jnp.zeros((), a.dtype))
  # The memories go onto the head axis: one op call with M H heads.
  fold = lambda a: None if a is None else a.reshape((b, t, m * h) + a.shape[4:])
  q_all = jnp.broadcast_to(q[:, :, None], (b, t, m, h, dk))
  state = None if initial_state is None else initial_state.reshape(b, m * h, dk, dv)
  o, state = op(**_op_inputs(fold(q_all), fold(jnp.where(routed[..., None], k, 0)), fold(v),
                             fold(keep(beta)), fold(keep(log_decay))),
                initial_state=state, segment_ids=segment_ids, mode=mode, chunk_size=chunk_size)
  o = jnp.einsum("btm,btmhv->bthv", dense_weights, o.reshape(b, t, m, h, dv).astype(jnp.float32))
  return o.astype(q.dtype), state.reshape(b, m, h, dk, dv)


def _gathered(op, q, k, v, beta, log_decay, memories, weights, segment_ids, mode, chunk_size):
  b, t, m = k.shape[:3]
  p = memories.shape[-1]
  # Assignment i = token * P + slot. Sorting by (memory, token) lines up each memory's tokens.
  token = jnp.broadcast_to(jnp.arange(t)[:, None], (t, p))
  order = jnp.argsort((memories * t + token).reshape(b, t * p), axis=1)  # [B, P T]
  token_of = order // p
  memory_of = jnp.take_along_axis(memories.reshape(b, t * p), order, axis=1)
  rows = jax.vmap(lambda a, index: a[index])
  by_token = lambda a: None if a is None else rows(a, token_of)
  by_memory = lambda a: None if a is None else rows(
      a.reshape((b, t * m) + a.shape[3:]), token_of * m + memory_of)
  document = (jnp.zeros((b, t), jnp.int32) if segment_ids is None
              else jnp.cumsum(segment_starts(segment_ids), axis=1, dtype=jnp.int32))
  # Changes at every memory and at every document boundary.
  run_ids = memory_of * (t + 1) + by_token(document)
  o, _ = op(**_op_inputs(by_token(q), by_memory(k), by_memory(v), by_memory(beta),
                         by_memory(log_decay)),
            segment_ids=run_ids, mode=mode, chunk_size=chunk_size)
  unsort = jax.vmap(lambda i: jnp.zeros_like(i).at[i].set(jnp.arange(t * p, dtype=i.dtype)))
  o = rows(o, unsort(order)).reshape(b, t, p, *o.shape[2:])
  o = jnp.einsum("btp,btphv->bthv", weights.astype(jnp.float32), o.astype(jnp.float32))
  return o.astype(q.dtype)
