"""The recurrence behind linear attention and the delta rule, in chunk, recurrent and parallel form.

Per head, with a float32 state S_t of shape `[Dk, Dv]` and D_t = diag(exp(g_t)):

  S_t = D_t S_{t-1} + k_t u_t^T,        o_t = scale * S_t^T q_t
  linear attention:  u_t = v_t
  delta rule:        u_t = beta_t (v_t - (D_t S_{t-1})^T k_t),
                     i.e. S_t = (I - beta_t k_t k_t^T) D_t S_{t-1} + beta_t k_t v_t^T.

g_t is a scalar per head (kept as a trailing axis of size 1) or a vector over Dk that decays the
rows of S. For the delta rule with a vector gate the decay acts before the update (as in Kimi Delta
Attention); with a scalar gate the order does not matter.

Chunk form (Yang et al. 2024, "Gated Linear Attention", sec. 3; "Parallelizing Linear Transformers
with the Delta Rule", sec. 3). Inside a chunk of C tokens let G_i = g_1 + ... + g_i and S_0 be the
entering state. Unrolling the recurrence:

  o_i = scale [ (exp(G_i) q_i)^T S_0 + sum_{j<=i} A_ij u_j ],   A_ij = sum_d q_id k_jd e^(G_id-G_jd)
  S_C = exp(G_C) S_0 + sum_j (exp(G_C - G_j) k_j) u_j^T

and for the delta rule the u_j solve the unit lower-triangular system (the UT / WY form)

  (I + diag(beta) M) U = diag(beta) (V - (exp(G) K) S_0),  M_ij = sum_d k_id k_jd e^(G_id-G_jd), j<i
  =>  U = U' - W S_0,  [W, U'] = (I + diag(beta) M)^{-1} diag(beta) [exp(G) K, V].

A, M, W, U' and the decayed q / k do not depend on S_0: they are computed for all chunks at once
with batched matmuls (the triangular system by recursive block inversion, `unit_lower_inverse`).
Only S_0 -> S_C runs sequentially, in a `lax.scan` over chunks (`chunking.scan_chunks`); for
linear attention (u = v) the increments `sum_j (exp(G_C - G_j) k_j) u_j^T` are batched too and the
scan only decays and adds. The reads `(exp(G_i) q_i)^T S_0` of all chunks are one batched product
after the scan, which keeps the state entering each chunk (the backward pass needs them anyway).
Arrays are laid out `[N, B*H, C, D]` (chunk, (sequence, head) row, token, feature), so that every
product is a plain batched matmul.

Stability: every exponent is G_i - G_j with j <= i, G_C - G_j, or G_i, all <= 0 for g <= 0, so no
exp overflows whatever the decay strength. For vector gates A and M are built in sub-chunks of 16:
blocks below the diagonal factor through the last position of the key's sub-chunk (both factors
have exponents <= 0); diagonal blocks are computed pairwise.

Packed documents: with r_i the number of document starts at positions <= i inside the chunk, token i
sees token j only if r_i == r_j, sees S_0 only if r_i == 0; k_j reaches S_C only if r_j == r_C and
S_0 survives the chunk only if r_C == 0.

Padding (T not a multiple of C) is zeros: k = v = beta = g = 0 leaves the state untouched.
"""

import jax
import jax.numpy as jnp

from memzoo.models.ops import chunking
from memzoo.models.ops.attention import match_vma
from memzoo.models.ops.segments import segment_starts

SUB_CHUNK = 16  # sub-chunk of the vector-gate score computation


def document_starts(segment_ids: jnp.ndarray | None) -> jnp.ndarray | None:
  """`[B, T]` bool: True where the state resets, i.e. the id differs from the previous token's;
  None without segments.

  Position 0 never resets: the initial state belongs to the first document.
  """
  if segment_ids is None:
    return None
  return segment_starts(segment_ids).at[:, 0].set(False)


def _masked_exp(exponent: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """`exp(exponent)` where `mask`, else 0; masked (possibly large) exponents are not evaluated."""
  return jnp.exp(jnp.where(mask, exponent, -jnp.inf))


@jax.checkpoint
def _vector_gate_scores(x: jnp.ndarray, y: jnp.ndarray, cum_gate: jnp.ndarray) -> jnp.ndarray:
  """`[N, Z, C, C]`: sum_d x_id y_jd exp(G_id - G_jd) for j <= i, zero above the diagonal.

  `x, y, cum_gate`: `[N, Z, C, D]`. Rematerialised in the backward pass: the pairwise
  `[c, c, D]` blocks are never stored.
  """
  chunks, rows, size, dim = x.shape
  sub = SUB_CHUNK if size % SUB_CHUNK == 0 else size
  blocks = size // sub
  # One batch axis z = (chunk, row): with a separate size-1 batch axis, XLA:CPU (jax 0.10.2)
  # crashes running the backward of the sub-chunk product below.
  xs, ys, gs = (a.reshape(chunks * rows, blocks, sub, dim) for a in (x, y, cum_gate))
  # Diagonal sub-chunks, pairwise, as one product summed over D that XLA fuses (as a three-operand
  # einsum the `[sub, sub, D]` products were written out: GLA's fwd+bwd 7-14% slower at 4K-16K).
  lower = jnp.tril(jnp.ones((sub, sub), bool))[:, :, None]
  pair_decay = _masked_exp(gs[:, :, :, None] - gs[:, :, None, :], lower)
  diagonal = jnp.sum(xs[:, :, :, None] * ys[:, :, None] * pair_decay, axis=-1)
  # Sub-chunk J < I: factor through G at the end of J.
  end = gs[:, :, -1]  # [z, J, D]
  y_to_end = ys * jnp.exp(end[:, :, None] - gs)
  earlier = (jnp.arange(blocks)[:, None] > jnp.arange(blocks)[None, :])[:, None, :, None]
  x_from_end = xs[:, :, :, None] * _masked_exp(gs[:, :, :, None] - end[:, None, None], earlier)
  below = jnp.einsum("zIiJd,zJjd->zIiJj", x_from_end, y_to_end)
  scores = below + jnp.einsum("zIij,IJ->zIiJj", diagonal, jnp.eye(blocks, dtype=x.dtype))
  return scores.reshape(chunks, rows, size, size)


def decayed_scores(x, y, cum_gate, same_doc, *, strict: bool) -> jnp.ndarray:
  """`[N, Z, C, C]`: sum_d x_id y_jd exp(G_id - G_jd) for j <= i (j < i if strict) within the
  same document, 0 elsewhere.

  Args:
    x, y: `[N, Z, C, D]`.
    cum_gate: G, `[N, Z, C, 1]` (scalar gate), `[N, Z, C, D]` (vector gate) or None (no decay).
    same_doc: `[N, Z, C, C]` bool.
  """
  size = x.shape[2]
  mask = jnp.tril(jnp.ones((size, size), bool), -1 if strict else 0) & same_doc
  if cum_gate is None:
    return jnp.where(mask, jnp.einsum("nzid,nzjd->nzij", x, y), 0.0)
  if cum_gate.shape[-1] == 1:
    g = cum_gate[..., 0]  # [N, Z, C]
    decay = _masked_exp(g[..., :, None] - g[..., None, :], mask)
    return jnp.einsum("nzid,nzjd->nzij", x, y) * decay
  return jnp.where(mask, _vector_gate_scores(x, y, cum_gate), 0.0)


def unit_lower_inverse(strict_lower: jnp.ndarray) -> jnp.ndarray:
  """`(I + L)^{-1}` for strictly lower-triangular `L [..., C, C]`, by recursive 2x2 block inversion.

  [[A, 0], [X, B]]^{-1} = [[A^-1, 0], [-B^-1 X A^-1, B^-1]]: with the inverses of the diagonal
  blocks of width w known, one batched pair of `[w, w]` products per pair of blocks gives those of
  width 2w (bottom-up from w = 1, whose blocks are 1). Only the diagonal blocks are ever
  multiplied, ~2/3 C^3 FLOPs in all instead of the 4 C^3 log2(C) of full-size products. Every
  intermediate is a block of the exact inverse (no series truncation or cancellation), and unlike
  batched LAPACK trsm it is matmul-bound on every backend. C is zero-padded to a power of two
  (padding rows and columns of L leave the leading block of the inverse unchanged).
  """
  size = strict_lower.shape[-1]
  width = 1 << (size - 1).bit_length()
  batch = strict_lower.shape[:-2]
  pad = [(0, 0)] * len(batch) + [(0, width - size)] * 2
  blocks = jnp.pad(strict_lower, pad)[..., None, :, :]  # [..., n, w, w]: L's diagonal blocks
  below = []  # top-down, the [..., n, w, w] blocks X of L under each diagonal pair of width w
  while width > 1:
    width //= 2
    below.append(blocks[..., width:, :width])
    blocks = jnp.stack([blocks[..., :width, :width], blocks[..., width:, width:]], axis=-3)
    blocks = blocks.reshape(*batch, -1, width, width)
  inverse = jnp.ones(blocks.shape, strict_lower.dtype)  # [..., C, 1, 1]
  for x in reversed(below):
    pairs = inverse.reshape(*x.shape[:-2], 2, *x.shape[-2:])
    a, b = pairs[..., 0, :, :], pairs[..., 1, :, :]
    upper = jnp.concatenate([a, jnp.zeros_like(a)], axis=-1)
    lower = jnp.concatenate([-(b @ x @ a), b], axis=-1)
    inverse = jnp.concatenate([upper, lower], axis=-2)
  return inverse[..., 0, :size, :size]


def decayed(x: jnp.ndarray, exponent: jnp.ndarray | None) -> jnp.ndarray:
  """`x * exp(exponent)`; `x` itself when there is no decay (`exponent` None)."""
  return x if exponent is None else x * jnp.exp(exponent)


def ut_transform(k, v, beta, cum_gate, sees_initial, same_doc):
  """`(W, U')` of the delta-rule chunk form (module doc), both `[N, Z, C, Dk | Dv]`; `beta`
  `[N, Z, C]`, the masks as `_document_masks` gives them (`True`, `1.0` for one document)."""
  m = decayed_scores(k, k, cum_gate, same_doc, strict=True)  # [N, Z, C, C]
  inverse = unit_lower_inverse(beta[..., None] * m)
  b = beta[..., None]
  # Two products rather than one over [K | V]: the concatenation and its backward's slices cost
  # more than the wider product saves (deltanet fwd+bwd at 16K 9-17% faster without them).
  return inverse @ (decayed(k, cum_gate) * (sees_initial * b)), inverse @ (v * b)


def _document_masks(starts):
  """`(same_doc [N, Z, C, C], sees_initial, reaches_final [N, Z, C, 1], keeps_initial [N, Z, 1])`
  from the chunked document starts `[N, Z, C]` (module doc, "Packed documents"); with one
  document per row (`starts` None), constants that drop out of the products."""
  if starts is None:
    return True, 1.0, 1.0, 1.0
  resets = chunking.prefix_sum(starts.astype(jnp.int32))  # r, [N, Z, C]
  return (resets[..., :, None] == resets[..., None, :], (resets == 0)[..., None],
          (resets == resets[:, :, -1:])[..., None], (resets[:, :, -1] == 0)[..., None])


def chunk_form(q, k, v, beta, log_decay, starts, state, scale, chunk_size):
  """Chunkwise-parallel form. Arrays as prepared by `run`; returns `(o [B,T,H,Dv], state)`.

  Works on rows z = (sequence, head), `[N, Z, C, D]` chunks, so that every product is a plain
  batched matmul over (chunk, row).
  """
  b, length, h = q.shape[:3]
  rows = chunking.heads_to_rows
  inputs = {"q": rows(q), "k": rows(k), "v": rows(v)}
  for name, value in (("g", log_decay), ("beta", beta)):
    if value is not None:
      inputs[name] = rows(value)
  if starts is not None:
    inputs["starts"] = jnp.repeat(starts, h, axis=0)
  c, valid = chunking.split_chunks(inputs, chunk_size)
  same_doc, sees_initial, reaches_final, keeps_initial = _document_masks(c.get("starts"))
  if log_decay is None:  # no exps to evaluate: G = 0
    cum_gate = to_end = None
    chunk_decay = jnp.ones((*c["q"].shape[:2], 1), jnp.float32) * keeps_initial  # [N, Z, 1]
  else:
    cum_gate = chunking.prefix_sum(c["g"])  # G, [N, Z, C, Dg]
    end_gate = cum_gate[:, :, -1:]
    to_end = end_gate - cum_gate
    chunk_decay = jnp.exp(end_gate[:, :, 0]) * keeps_initial  # [N, Z, Dg]

  q_read = decayed(c["q"], cum_gate) * sees_initial
  k_write = decayed(c["k"], to_end) * reaches_final
  scores = decayed_scores(c["q"], c["k"], cum_gate, same_doc, strict=False)
  state = state.reshape(b * h, *state.shape[2:])
  if beta is None:
    # The state increments do not depend on the state: one batched product for all chunks, and
    # the scan only decays and adds.
    u = c["v"]
    increments = jnp.einsum("nzck,nzcv->nzkv", k_write, u)

    def step(s, chunk, _):
      decay, increment = chunk
      return s * decay[..., None] + increment, s

    state, entering = chunking.scan_chunks(step, state, (chunk_decay, increments), valid)
  else:
    w, u_free = ut_transform(c["k"], c["v"], c["beta"], cum_gate, sees_initial, same_doc)

    def step(s, chunk, _):
      k_write, decay, w, u_free = chunk
      u = u_free - w @ s
      return s * decay[..., None] + jnp.einsum("zck,zcv->zkv", k_write, u), (s, u)

    state, (entering, u) = chunking.scan_chunks(step, state, (k_write, chunk_decay, w, u_free),
                                                valid)
  # Reading the entering states is one batched product too.
  o = scale * (q_read @ entering + scores @ u)
  o = chunking.rows_to_heads(chunking.merge_chunks(o, length), h)
  return o, state.reshape(b, h, *state.shape[1:])


def recurrent_form(q, k, v, beta, log_decay, starts, state, scale):
  """Token-by-token form (`lax.scan` over time). Arrays as prepared by `run`."""
  inputs = {"q": q, "k": k, "v": v}
  for name, value in (("g", log_decay), ("beta", beta), ("starts", starts)):
    if value is not None:
      inputs[name] = value

  def step(s, token, _):
    x = jax.tree.map(lambda a: a[:, 0], token)
    if "g" in x:
      s = s * jnp.exp(x["g"])[..., None]  # g [B, H, Dg]
    if "starts" in x:
      s = jnp.where(x["starts"][:, None, None, None], 0.0, s)
    u = x["v"]
    if beta is not None:
      u = x["beta"][..., None] * (u - jnp.einsum("bhk,bhkv->bhv", x["k"], s))
    s = s + jnp.einsum("bhk,bhv->bhkv", x["k"], u)
    return s, scale * jnp.einsum("bhk,bhkv->bhv", x["q"], s)[:, None]

  state, o = chunking.chunked_scan(step, state, inputs, 1)
  return o, state


def _scores_flops(size: int, dim: int, gate: str | None) -> int:
  """Matmul FLOPs of one `decayed_scores` call on a chunk of `size` tokens, per batch and head."""
  if gate != "vector":
    return 2 * size * size * dim
  # Blocks below the diagonal and the dot placing the diagonal ones; those are sums of elementwise
  # products, not matmuls (not counted, like masks and exps).
  return 2 * size * size * dim + 2 * size * size


def _inverse_flops(size: int) -> int:
  """`unit_lower_inverse` on `[size, size]`, zero-padded to a power of two P: at each block width
  w < P, two `[w, w]` products for each of the P / 2w pairs of diagonal blocks."""
  padded = 1 << max(size - 1, 0).bit_length()
  return sum(2 * padded * w * w for w in (1 << i for i in range(padded.bit_length() - 1)))


def flops(batch: int, length: int, heads: int, dk: int, dv: int, *, delta: bool,
          gate: str | None, mode: str, chunk_size: int) -> int:
  """Forward matmul FLOPs of `run` (2 per multiply-add; masks and exps not counted).

  `gate`: None (no decay), "scalar" (`log_decay [B, T, H]`) or "vector" (`[B, T, H, Dk]`).
  Chunk form, per chunk of C tokens and head: scores `2 C^2 Dk`, their product with the values
  `2 C^2 Dv`, the reads from and writes to the state `2 x 2 C Dk Dv`, and with a gate its prefix
  sum, a product with the triangular ones matrix, `2 C^2 Dg`; the delta rule adds the `k k^T`
  scores, the block inversion, the `[W, U']` solve `2 C^2 (Dk + Dv)` and `W S` `2 C Dk Dv`.
  Padding up to a multiple of C is computed, so counted. Recurrent form, per token and head:
  `2 Dk Dv` for each of the read and the write, plus one for the delta rule's `k^T S`.
  """
  if mode == "recurrent":
    return batch * heads * length * (3 if delta else 2) * 2 * dk * dv
  if mode == "parallel":
    chunk_size = -(-length // SUB_CHUNK) * SUB_CHUNK
  c, chunks = chunk_size, -(-length // chunk_size)
  per_chunk = _scores_flops(c, dk, gate) + 2 * c * c * dv + 2 * 2 * c * dk * dv
  if gate is not None:
    per_chunk += 2 * c * c * (dk if gate == "vector" else 1)
  if delta:
    per_chunk += (_scores_flops(c, dk, gate) + _inverse_flops(c) + 2 * c * c * (dk + dv)
                  + 2 * c * dk * dv)
  return batch * heads * chunks * per_chunk


def _check(condition: bool, name: str, problem: str, fix: str) -> None:
  if not condition:
    raise ValueError(f"{name}: {problem}; {fix}")


def check_arguments(q, k, v, beta, *, log_decay, initial_state, segment_ids, chunk_size) -> None:
  """Raises a one-line ValueError naming the argument whose shape or value is wrong.

  Shapes as in `linear_attention` / `delta_rule` (`beta` None for linear attention)."""
  _check(q.ndim == 4, "q", f"shape {q.shape} is not [B, T, H, Dk]", "pass q as [B, T, H, Dk]")
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  _check(k.shape == q.shape, "k", f"shape {k.shape} differs from q {q.shape}",
         "give q and k the same [B, T, H, Dk]")
  _check(v.shape == (b, t, h, dv), "v", f"shape {v.shape} does not match q {q.shape}",
         "pass v as [B, T, H, Dv]")
  _check(beta is None or beta.shape == (b, t, h), "beta", f"shape {getattr(beta, 'shape', None)}",
         f"pass beta as [B, T, H] = {(b, t, h)}")
  _check(log_decay is None or log_decay.shape in ((b, t, h), (b, t, h, dk)), "log_decay",
         f"shape {getattr(log_decay, 'shape', None)}",
         f"pass [B, T, H] = {(b, t, h)} (scalar gate) or [B, T, H, Dk] = {(b, t, h, dk)}")
  _check(initial_state is None or initial_state.shape == (b, h, dk, dv), "initial_state",
         f"shape {getattr(initial_state, 'shape', None)}",
         f"pass [B, H, Dk, Dv] = {(b, h, dk, dv)}")
  _check(segment_ids is None or segment_ids.shape == (b, t), "segment_ids",
         f"shape {getattr(segment_ids, 'shape', None)}", f"pass [B, T] = {(b, t)}")
  _check(isinstance(chunk_size, int) and chunk_size > 0, "chunk_size", f"got {chunk_size!r}",
         "use a positive int such as 64")


def run(q, k, v, beta, *, log_decay, scale, initial_state, segment_ids, mode, chunk_size, modes):
  """Validates the arguments of `linear_attention` / `delta_rule` and runs the chosen form.

  `beta` is None for linear attention. Returns `(o [B, T, H, Dv] in q's dtype, state float32)`.
  """
  _check(mode in modes, "mode", f"got {mode!r}", f"use one of {', '.join(map(repr, modes))}")
  check_arguments(q, k, v, beta, log_decay=log_decay, initial_state=initial_state,
                  segment_ids=segment_ids, chunk_size=chunk_size)
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  f32 = lambda a: None if a is None else a.astype(jnp.float32)
  scale = dk ** -0.5 if scale is None else scale
  if log_decay is not None and log_decay.ndim == 3:
    log_decay = log_decay[..., None]
  state = (jnp.zeros((b, h, dk, dv), jnp.float32) if initial_state is None
           else initial_state.astype(jnp.float32))
  state = match_vma(state, q, k, v, beta, log_decay, segment_ids)  # a loop carry in shard_map
  args = (f32(q), f32(k), f32(v), f32(beta), f32(log_decay), document_starts(segment_ids),
          state, scale)
  if mode == "recurrent":
    o, state = recurrent_form(*args)
  else:
    if mode == "parallel":  # one chunk holding the whole sequence
      chunk_size = -(-t // SUB_CHUNK) * SUB_CHUNK
    o, state = chunk_form(*args, chunk_size)
  return o.astype(q.dtype), state
