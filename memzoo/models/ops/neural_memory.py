"""Titans neural memory (Behrouz, Zhong, Mirrokni 2025, §3) with the ATLAS options (Behrouz et al.
2025): a memory network `M` (ops/memory_mlp.py) trained online, per batch element and head, on the
associative loss `l_t(M) = 1/2 ||M(k_t) - v_t||^2`:

    S_t = eta_t S_{t-1} - theta_t grad l_t(M_{t0})      (momentum of the "surprise", eq. 10)
    M_t = (1 - alpha_t) M_{t-1} + S_t                   (forgetting by weight decay, eq. 13)
    o_t = M_t(q_t)                                      (read after the token's own update)

`t0` is the start of t's chunk: inside a chunk of `chunk_size` tokens every gradient is taken at the
chunk-start weights (mini-batch gradient descent, §3.2), so `chunk_size=1` is plain online GD.

Chunk form. With `a = 1 - alpha` and the products `La[i, j] = prod_{j<l<=i} a_l`,
`Le[i, j] = prod_{j<l<=i} eta_l` (index 0 = the chunk start), unrolling the two recurrences gives

    M_i = La[i,0] M_0 + (La Le)[i,0] S_0 - sum_m (La Le)[i,m] theta_m a_m d_m^T

where `a_m d_m^T` is token m's gradient (memory_mlp.sample_gradients). A layer's read `z^T M_i` is
then a few `[C, C]` matmuls (memory_mlp.dual_read): no per-token weight copy is ever built.

ATLAS options:
  * Omega rule (§3.2): `grad l_t` becomes `sum_{i=t-c+1..t} gamma_i grad l_i(M_{t0})`, a banded
    `[C, c-1+C]` mixing matrix over the chunk and the c-1 tokens before it (kept in the state).
  * Muon (§4): `S_t = eta_t S_{t-1} - grad_t;  M_t = (1 - alpha_t) M_{t-1} + theta_t NS(S_t)`,
    with NS the Newton-Schulz orthogonalisation. NS is not linear, so this form builds the per-token
    momenta and weights of one chunk (`[B, H, C, I, O]`) at a time.
  * Per-sample gradient soft-clipping: `g <- c tanh(|g|/c) g/|g|`, before the Omega weights.

Packed documents (`segment_ids`): at a document start the state becomes `reset_state` (weights,
momentum) and the rest of that chunk takes its gradients at the reset weights. Chunks follow the
global grid (position 0 of the call, continued through the state), so a document that starts
mid-chunk has a shorter first mini-batch than it would alone. Token 0 of a call never resets: it
continues the state.

Precision: the memory computes in float32 (float64 stays float64) whatever the inputs' dtype, and
returns `o` in q's. The inner gradient steps compound rounding: with bf16 operands in its products
(float32 sums) the outer gradients of a fresh layer were up to 14% off a float64 run at T = 1024,
against < 0.1% in float32 (experiments/titans/README.md, session 19).
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from memzoo.models.ops import dense, memory_mlp
from memzoo.models.ops.chunking import chunked_scan, merge_chunks, scan_chunks, split_chunks
from memzoo.models.ops.segments import segment_starts

Weights = tuple[jnp.ndarray, ...]


class MemoryState(NamedTuple):
  """Decode / streaming state. Weight tuples hold one `[B, H, I, O]` array per memory layer.

  weights: `M_t`.  momentum: `S_t`.  anchor: the weights at the start of the current chunk, where
  the chunk's gradients are taken.  offset: tokens of the current chunk already seen (int32 scalar;
  the Python int 0 marks a state known to sit on a chunk boundary and selects the fast path).
  window_keys `[B, H, c-1, Din]`, window_values `[B, H, c-1, Dout]`, window_weights `[B, H, c-1]`:
  the last c-1 tokens of the Omega window (weight 0 marks an empty slot; c = 1 gives empty arrays).
  """
  weights: Weights
  momentum: Weights
  anchor: Weights
  offset: jnp.ndarray | int
  window_keys: jnp.ndarray
  window_values: jnp.ndarray
  window_weights: jnp.ndarray


def memory_state(weights: Sequence[jnp.ndarray], *, momentum: Sequence[jnp.ndarray] | None = None,
                 omega_window: int = 1) -> MemoryState:
  """A state on a chunk boundary with memory `weights` (per layer `[B, H, I, O]`), zero momentum
  unless given, and an empty Omega window of `omega_window - 1` slots."""
  if omega_window < 1:
    raise ValueError(f"omega_window must be >= 1, got {omega_window}")
  weights = tuple(weights)
  momentum = tuple(jnp.zeros_like(w) for w in weights) if momentum is None else tuple(momentum)
  b, h, d_in, _ = weights[0].shape
  d_out = weights[-1].shape[-1]
  dtype = weights[0].dtype
  slots = omega_window - 1
  return MemoryState(weights, momentum, weights, 0, jnp.zeros((b, h, slots, d_in), dtype),
                     jnp.zeros((b, h, slots, d_out), dtype), jnp.zeros((b, h, slots), dtype))


class _Rule(NamedTuple):
  """Static options shared by the chunk and token steps."""
  chunk_size: int
  activation: str
  residual: bool
  grad_clip: float | None
  muon: bool
  ns_steps: int
  has_resets: bool


def _transition_products(a: jnp.ndarray) -> jnp.ndarray:
  """`a [..., C] -> P [..., C+1, C+1]`, `P[i, j] = prod_{j<l<=i} a_l` (a indexed 1..C; index 0 is
  the chunk start), 0 above the diagonal. Plain products, so gates equal to 0 are exact."""
  c = a.shape[-1]
  a = jnp.concatenate([jnp.ones_like(a[..., :1]), a], axis=-1)
  idx = jnp.arange(c + 1)
  factors = jnp.where(idx[:, None] > idx[None, :], a[..., :, None], 1.0)  # [..., l, j]
  return jnp.where(idx[:, None] >= idx[None, :], jnp.cumprod(factors, axis=-2), 0.0)


def _select(pred, on_true, on_false):
  """`where` over matching pytrees; `pred [B]` broadcasts over each leaf's trailing axes."""
  def pick(x, y):
    return jnp.where(pred.reshape(pred.shape + (1,) * (x.ndim - pred.ndim)), x, y)
  return jax.tree.map(pick, on_true, on_false)


def _weighted_gradients(rule: _Rule, anchor: Weights, keys, values, sample_weights):
  """Per-token gradient factors at `anchor`, soft-clipped, times `sample_weights [B, H, P]`."""
  inputs, deltas = memory_mlp.sample_gradients(anchor, keys, values, rule.activation,
                                               rule.residual)
  if rule.grad_clip is not None:
    norms = memory_mlp.gradient_norms(inputs, deltas)
    sample_weights = sample_weights * memory_mlp.soft_clip_factors(norms, rule.grad_clip)
  return inputs, [d * sample_weights[..., None] for d in deltas]


def _outer_sum(coef, inputs, deltas):
  """`sum_p coef[.., p] a_p d_p^T` per layer; `coef [B, H, P]` or `[B, H, N, P]` (then per N)."""
  if coef.ndim == 3:
    sums = []
    for a, d in zip(inputs, deltas):
      if a.shape[-1] <= d.shape[-1]:  # the coefficients scale the narrower factor
        a = a * coef[..., None]
      else:
        d = d * coef[..., None]
      sums.append(dense.einsum("bhpi,bhpo->bhio", a, d))
    return tuple(sums)
  return tuple(jnp.einsum("bhnp,bhpi,bhpo->bhnio", coef, a, d) for a, d in zip(inputs, deltas))


def _matvec(m, x):
  return jnp.einsum("bhij,bhj->bhi", m, x)


def _combine(coefs, bases):
  """`sum_j coefs[j] * bases[j]` per layer, coefs `[B, H]` (or `[B, H, N]`, giving per-N copies)."""
  def scale(c, w):
    return c.reshape(c.shape + (1, 1)) * (w[:, :, None] if c.ndim == 3 else w)
  return tuple(sum(scale(c, base[i]) for c, base in zip(coefs, bases))
               for i in range(len(bases[0])))


_PAD = {"q": 0.0, "k": 0.0, "v": 0.0, "lr": 0.0, "mom": 1.0, "keep": 1.0, "gamma": 0.0,
        "reset": False, "real": False}  # a padding token leaves the state unchanged


class _Coefficients(NamedTuple):
  """The parts of a chunk that depend on the gates only, computed for all chunks before the scan.

  `m_coefs[j][i]` / `s_coefs[j][i]` weigh the j-th weight / momentum base (the chunk-start state,
  then the reset state) in M_i / S_i; `mixing [B, H, C, P]` weighs the P gradients in M_i (Muon: in
  S_i). `after [B, 1, P]` marks tokens after a reset; `pick [c-1]` / `keep_slot [B, 1, c-1]` say
  which tokens form the next Omega window and which of them stay in the current document."""
  m_coefs: list
  s_coefs: list
  mixing: jnp.ndarray
  s_mixing_last: jnp.ndarray
  a_mat: jnp.ndarray
  after: jnp.ndarray
  pick: jnp.ndarray
  keep_slot: jnp.ndarray


def _coefficients(rule: _Rule, slots: int, x) -> _Coefficients:
  """Gate-only coefficients of one chunk, `x` leaves `[B, C, ...]` (see `neural_memory`)."""
  lr, mom, keep = (jnp.swapaxes(x[n], 1, 2) for n in ("lr", "mom", "keep"))  # [B, H, C]
  reset = x["reset"][:, None, :]                                           # [B, 1, C]
  real = x["real"][0]                                                      # [C], same for all rows
  la = _transition_products(jnp.where(reset, 0.0, keep))
  le = _transition_products(jnp.where(reset, 0.0, mom))
  a0, a_mat = la[..., 1:, 0], la[..., 1:, 1:] * real.astype(la.dtype)  # S_j enters M if j is real
  e0, e_mat = le[..., 1:, 0], le[..., 1:, 1:]

  # Tokens whose gradients enter this chunk: the Omega window before it (P - C = c - 1 slots), then
  # the chunk. Omega: token m's update sums the gradients of the last c real tokens of its own
  # document, a banded [C, P] matrix applied on the right of each [C, C] coefficient matrix.
  ext_reset = jnp.concatenate([jnp.zeros(reset.shape[:2] + (slots,), bool), reset], axis=2)
  ext_real = jnp.concatenate([jnp.ones((slots,), bool), real])
  rank, seg = jnp.cumsum(ext_real), jnp.cumsum(ext_reset, axis=2)
  mix = lambda m: m
  if slots:
    rank_m = rank[slots:, None]
    window = (rank[None, :] > rank_m - (slots + 1)) & (rank[None, :] <= rank_m)
    window &= ext_real[None, :] & real[:, None]
    omega = (window & (seg[..., slots:, None] == seg[..., None, :])).astype(la.dtype)
    mix = lambda m: m @ omega
  # The next window: the last c-1 real tokens, dropping those of an earlier document.
  pick = jnp.searchsorted(rank, rank[-1] - slots + 1 + jnp.arange(slots))
  keep_slot = seg[:, :, pick] == seg[:, :, pick[-1:]] if slots else seg[:, :, :0] == 0

  # Terms of M_i that are not this chunk's gradients: the weights M and momentum S of the chunk
  # start and, after a reset token r, the reset state entering like a chunk start at r.
  m_coefs, s_coefs = [a0], [e0]
  if rule.has_resets:
    m_coefs.append(_matvec(a_mat, reset * keep))
    s_coefs.append(_matvec(e_mat, reset * mom))
  if rule.muon:  # M_i = sum_j a_mat[i, j] theta_j NS(S_j): mixing gives the S_j
    mixing, s_mixing_last = mix(e_mat), jnp.zeros(e0.shape[:2] + (0,), la.dtype)
  else:
    m_coefs += [_matvec(a_mat, c) for c in s_coefs]
    s_mix = mix(e_mat * lr[..., None, :])
    mixing, s_mixing_last = a_mat @ s_mix, s_mix[..., -1, :]
  after = jax.lax.cummax(ext_reset.astype(jnp.int32), axis=2).astype(bool)
  return _Coefficients(m_coefs, s_coefs, mixing, s_mixing_last, a_mat, after, pick, keep_slot)


def _chunk_step(rule: _Rule, reset_state, state: MemoryState, x, coef: _Coefficients, *,
                aligned: bool):
  """One chunk of the chunk form: the work that needs the state.

  `aligned`: the chunk starts on a chunk boundary, where the anchor equals the weights; the
  gradients are then taken at `state.weights`, so that the backward pass needs no separate copy of
  the anchor per chunk."""
  q, k, v = (jnp.swapaxes(x[n], 1, 2) for n in ("q", "k", "v"))              # [B, H, C, D]
  lr, gamma = (jnp.swapaxes(x[n], 1, 2) for n in ("lr", "gamma"))
  keys = jnp.concatenate([state.window_keys, k], axis=2)
  values = jnp.concatenate([state.window_values, v], axis=2)
  ext_gamma = jnp.concatenate([state.window_weights, gamma], axis=2)
  inputs, deltas = _weighted_gradients(rule, state.weights if aligned else state.anchor, keys,
                                       values, ext_gamma)
  m_bases, s_bases = [state.weights], [state.momentum]
  if rule.has_resets:  # tokens after a reset in this chunk take gradients at the reset weights
    r_inputs, r_deltas = _weighted_gradients(rule, reset_state[0], keys, values, ext_gamma)
    after = coef.after[..., None]
    inputs = [jnp.where(after, r, g) for r, g in zip(r_inputs, inputs)]
    deltas = [jnp.where(after, r, g) for r, g in zip(r_deltas, deltas)]
    m_bases.append(reset_state[0])
    s_bases.append(reset_state[1])

  if rule.muon:
    momenta = tuple(s - g for s, g in zip(_combine(coef.s_coefs, s_bases),
                                          _outer_sum(coef.mixing, inputs, deltas)))
    updates = [lr[..., None, None] * memory_mlp.newton_schulz(s, rule.ns_steps) for s in momenta]
    per_token = tuple(w + jnp.einsum("bhij,bhjxo->bhixo", coef.a_mat, u)
                      for w, u in zip(_combine(coef.m_coefs, m_bases), updates))
    reads = memory_mlp.forward_per_token(per_token, q, rule.activation, rule.residual)
    new_weights = tuple(w[:, :, -1] for w in per_token)
    new_momentum = tuple(s[:, :, -1] for s in momenta)
  else:
    bases = m_bases + s_bases
    reads = memory_mlp.dual_read(q, coef.m_coefs, bases, coef.mixing, inputs, deltas,
                                 rule.activation, rule.residual)
    last = lambda coefs: [c[..., -1] for c in coefs]
    new_weights = tuple(w - g for w, g in zip(_combine(last(coef.m_coefs), bases),
                                              _outer_sum(coef.mixing[..., -1, :], inputs, deltas)))
    new_momentum = tuple(s - g for s, g in zip(_combine(last(coef.s_coefs), s_bases),
                                               _outer_sum(coef.s_mixing_last, inputs, deltas)))

  # A chunk that ends on a real token is complete: its end becomes the next gradient point.
  anchor = state.anchor
  if rule.has_resets:
    anchor = _select(coef.after[:, 0, -1], reset_state[0], anchor)
  anchor = jax.tree.map(lambda new, old: jnp.where(x["real"][0, -1], new, old), new_weights, anchor)
  window = (keys[:, :, coef.pick], values[:, :, coef.pick],
            jnp.where(coef.keep_slot, ext_gamma[:, :, coef.pick], 0.0))
  new_state = MemoryState(new_weights, new_momentum, anchor, state.offset, *window)
  return new_state, jnp.swapaxes(reads, 1, 2)


def _chunked(rule: _Rule, reset_state, state: MemoryState, tokens, chunk_size: int, *,
             aligned: bool):
  """The chunk form over `tokens` (leaves `[B, T, ...]`): gate-only coefficients for all chunks at
  once, then a scan of the state-dependent work. `aligned`: every chunk starts on a chunk boundary
  (the state does, and no padding precedes the tokens)."""
  length = tokens["q"].shape[1]
  chunks, valid = split_chunks(tokens, chunk_size, pad_values=_PAD)
  slots = state.window_keys.shape[2]
  coefs = jax.vmap(lambda x: _coefficients(rule, slots, x))(chunks)
  step = lambda s, xc, _: _chunk_step(rule, reset_state, s, *xc, aligned=aligned)
  state, out = scan_chunks(step, state, (chunks, coefs), valid)
  return state, merge_chunks(out, length)


def _token_step(rule: _Rule, reset_state, state: MemoryState, x, valid):
  """One token of the recurrent form, literally the recurrence. `x` leaves are `[B, 1, ...]`."""
  del valid  # the recurrent form runs on unpadded chunks of one token
  names = ("q", "k", "v", "lr", "mom", "keep", "gamma")
  q, k, v, lr, mom, keep, gamma = (x[n][:, 0] for n in names)
  if rule.has_resets:
    reset = x["reset"][:, 0]
    state = state._replace(
        weights=_select(reset, reset_state[0], state.weights),
        momentum=_select(reset, reset_state[1], state.momentum),
        anchor=_select(reset, reset_state[0], state.anchor),
        window_weights=jnp.where(reset[:, None, None], 0.0, state.window_weights))
  keys = jnp.concatenate([state.window_keys, k[:, :, None]], axis=2)        # [B, H, c, Din]
  values = jnp.concatenate([state.window_values, v[:, :, None]], axis=2)
  sample_weights = jnp.concatenate([state.window_weights, gamma[..., None]], axis=2)
  inputs, deltas = _weighted_gradients(rule, state.anchor, keys, values, sample_weights)
  grads = _outer_sum(jnp.ones_like(sample_weights), inputs, deltas)
  col = lambda g: g[..., None, None]
  if rule.muon:
    momentum = tuple(col(mom) * s - g for s, g in zip(state.momentum, grads))
    weights = tuple(col(keep) * w + col(lr) * memory_mlp.newton_schulz(s, rule.ns_steps)
                    for w, s in zip(state.weights, momentum))
  else:
    momentum = tuple(col(mom) * s - col(lr) * g for s, g in zip(state.momentum, grads))
    weights = tuple(col(keep) * w + s for w, s in zip(state.weights, momentum))
  read = memory_mlp.forward(weights, q[:, :, None], rule.activation, rule.residual)
  offset = state.offset + 1
  complete = offset == rule.chunk_size
  anchor = jax.tree.map(lambda new, old: jnp.where(complete, new, old), weights, state.anchor)
  new_state = MemoryState(weights, momentum, anchor, jnp.where(complete, 0, offset),
                          keys[:, :, 1:], values[:, :, 1:], sample_weights[:, :, 1:])
  return new_state, jnp.swapaxes(read, 1, 2)


def _shift(x, offset, chunk_size: int, value):
  """Delays `x [B, T, ...]` by a traced `offset < chunk_size`, filling with `value`: the output
  `[B, T + C, ...]` has x at positions offset..offset+T-1."""
  fill = jnp.full((x.shape[0], chunk_size) + x.shape[2:], value, x.dtype)
  padded = jnp.concatenate([fill, x, fill], axis=1)
  return jax.lax.dynamic_slice_in_dim(padded, chunk_size - offset, x.shape[1] + chunk_size, 1)


def _check(q, k, v, lr, momentum, decay, omega_weights, state, chunk_size, mode, residual):
  b, t, h, d_in = q.shape
  d_out = v.shape[-1]
  if k.shape != q.shape or v.shape[:3] != (b, t, h):
    raise ValueError(f"q, k, v must be [B, T, H, D] with equal B, T, H and q, k alike; got q "
                     f"{q.shape}, k {k.shape}, v {v.shape}")
  for name, gate in (("lr", lr), ("momentum", momentum), ("decay", decay),
                     ("omega_weights", omega_weights)):
    if gate is not None and gate.shape != (b, t, h):
      raise ValueError(f"{name} must be [B, T, H] = {(b, t, h)}, got {gate.shape}")
  w_in, w_out = state.weights[0].shape, state.weights[-1].shape
  if w_in[:3] != (b, h, d_in) or w_out[-1] != d_out:
    raise ValueError(f"state weights must map [B, H, {d_in}] keys to {d_out} values; got "
                     f"{[w.shape for w in state.weights]}")
  if residual and d_in != d_out:
    raise ValueError(f"residual memory needs equal key and value widths, got {d_in} and {d_out}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  if mode not in ("chunk", "recurrent"):
    raise ValueError(f"mode={mode!r}: use 'chunk' or 'recurrent'")


def neural_memory(q, k, v, lr, momentum, decay, *, state: MemoryState, chunk_size: int,
                  activation: str = "gelu", residual: bool = False, omega_weights=None,
                  grad_clip: float | None = None, muon: bool = False, ns_steps: int = 5,
                  segment_ids=None, reset_state: tuple[Weights, Weights] | None = None,
                  mode: str = "chunk") -> tuple[jnp.ndarray, MemoryState]:
  """Runs the memory over a block of tokens (see the module docstring for the rule).

  Args:
    q, k: `[B, T, H, Din]` queries and keys; v: `[B, T, H, Dout]` values.
    lr, momentum, decay: `[B, T, H]`, the per-token theta_t, eta_t, alpha_t.
    state: the incoming `MemoryState` (`memory_state(...)` for a fresh one); its Omega window
      length fixes c.
    chunk_size: tokens per mini-batch (the gradient anchor moves every chunk_size tokens).
    activation, residual: the memory network (ops/memory_mlp.py).
    omega_weights: `[B, T, H]` Omega weights gamma_t (ones if None).
    grad_clip: soft-clip each token's gradient to this Frobenius norm (None: off).
    muon, ns_steps: ATLAS's orthogonalised momentum update with `ns_steps` Newton-Schulz steps.
    segment_ids: `[B, T]` packed documents; the state becomes `reset_state` where a new one starts.
    reset_state: `(weights, momentum)` per layer, broadcastable to the state's shapes (zeros if
      None).
    mode: "chunk" (parallel inside chunks) or "recurrent" (token by token; decoding, reference).

  Returns:
    `(o [B, T, H, Dout], final MemoryState)`, o in q's dtype.
  """
  _check(q, k, v, lr, momentum, decay, omega_weights, state, chunk_size, mode, residual)
  b, t = q.shape[:2]
  dtype = jnp.result_type(jnp.float32, q.dtype, state.weights[0].dtype)
  cast = lambda x: x.astype(dtype)
  offset = state.offset
  state = jax.tree.map(cast, state._replace(offset=None))
  state = state._replace(offset=jnp.asarray(offset, jnp.int32))
  has_resets = segment_ids is not None
  if has_resets:
    if reset_state is None:
      reset_state = (tuple(map(jnp.zeros_like, state.weights)),) * 2
    reset_state = tuple(tuple(jnp.broadcast_to(cast(r), w.shape)
                              for r, w in zip(part, state.weights)) for part in reset_state)
    resets = segment_starts(segment_ids) & (jnp.arange(t) > 0)
  else:
    resets = jnp.zeros((b, t), bool)
  tokens = {"q": q, "k": k, "v": v, "lr": lr, "mom": momentum, "keep": 1.0 - cast(decay),
            "gamma": jnp.ones_like(lr) if omega_weights is None else omega_weights}
  tokens = {name: cast(x) for name, x in tokens.items()}
  tokens.update(reset=resets, real=jnp.ones((b, t), bool))
  rule = _Rule(chunk_size, activation, residual, grad_clip, muon, ns_steps, has_resets)

  if mode == "recurrent":
    step = lambda s, x, valid: _token_step(rule, reset_state, s, x, valid)
    state, out = chunked_scan(step, state, tokens, 1)
    return out.astype(q.dtype), state
  if isinstance(offset, int) and offset == 0:  # known to start on a chunk boundary
    state, out = _chunked(rule, reset_state, state, tokens, chunk_size, aligned=True)
  else:  # continue a partial chunk: delay the tokens so that they land at the right in-chunk slot
    shifted = {n: _shift(x, state.offset, chunk_size, _PAD[n]) for n, x in tokens.items()}
    state, out = _chunked(rule, reset_state, state, shifted, chunk_size, aligned=False)
    out = jax.lax.dynamic_slice_in_dim(out, state.offset, t, axis=1)
  state = state._replace(offset=(state.offset + t) % chunk_size)
  return out.astype(q.dtype), state


def neural_memory_linear(q, k, v, lr, momentum, decay, *, chunk_size: int,
                         initial_state: tuple[jnp.ndarray, jnp.ndarray] | None = None,
                         segment_ids=None, mode: str = "chunk"):
  """The linear (matrix) memory, `o_t = q_t^T M_t` with `M [B, H, Dk, Dv]` (module docstring).

  Args:
    q, k: `[B, T, H, Dk]`; v: `[B, T, H, Dv]`; lr, momentum, decay: `[B, T, H]`.
    chunk_size: mini-batch size (1 = online gradient descent).
    initial_state: `(M, S)`, each `[B, H, Dk, Dv]`, taken to sit on a chunk boundary (zeros if
      None).
    segment_ids: `[B, T]` packed documents; M and S reset to zero where a new one starts.

  Returns:
    `(o [B, T, H, Dv], (M, S))`. Passing `(M, S)` on continues exactly when T is a multiple of
    chunk_size; to stream blocks of any length use `neural_memory` with its full `MemoryState`.
  """
  b, _, h, d_k = q.shape
  if initial_state is None:
    zeros = jnp.zeros((b, h, d_k, v.shape[-1]), jnp.float32)
    initial_state = (zeros, zeros)
  m, s = initial_state
  o, state = neural_memory(q, k, v, lr, momentum, decay, state=memory_state((m,), momentum=(s,)),
                           chunk_size=chunk_size, segment_ids=segment_ids, mode=mode)
  return o, (state.weights[0], state.momentum[0])


def neural_memory_flops(batch: int, length: int, heads: int, shapes: Sequence[tuple[int, int]], *,
                        chunk_size: int, mode: str = "chunk", omega_window: int = 1,
                        muon: bool = False, ns_steps: int = 5) -> int:
  """Forward matmul FLOPs of `neural_memory` from a fresh state, without `segment_ids` (2 per
  multiply-add; gates, products of gates, clipping and activations not counted).

  `shapes`: the memory's `memory_mlp.layer_shapes`. With c = omega_window and per batch and head:

  * recurrent, per token: the gradients of the c window tokens at the anchor, their sum, the read,
    and Muon's Newton-Schulz on the momentum;
  * chunk, per chunk of C tokens (T padded up to a multiple of C) with P = C + c - 1 gradient
    tokens: the `[C, C]` coefficient products (the Omega band adds a `[C, C] @ [C, P]` product),
    the P gradients and then either `dual_read` (two weight bases, `[C, P]` scores) and the two
    sums of the end-of-chunk weights and momentum, or, with Muon, per-token momenta, their
    Newton-Schulz, weights and reads.

  A sum of gradients weighted by one coefficient row (`_outer_sum`) scales the narrower gradient
  factor (elementwise, not counted) and sums the products (`I O` per gradient); by N rows (Muon)
  it is a three-operand einsum that jnp.einsum contracts cheapest pair first: the coefficients
  with the narrower factor (`N min(I, O)` per gradient) or the two factors (`I O`), then the rest
  (`N I O`).
  """
  io = [i * o for i, o in shapes]
  slots = omega_window - 1
  grads = lambda rows: memory_mlp.sample_gradient_flops(shapes, rows)
  outer_sum = lambda rows, n=1: sum(2 * rows * ((n > 1) * min(i_o, n * min(s)) + n * i_o)
                                   for s, i_o in zip(shapes, io))
  if mode == "recurrent":
    per_token = (grads(omega_window) + outer_sum(omega_window) + memory_mlp.forward_flops(shapes, 1)
                 + (memory_mlp.newton_schulz_flops(shapes, ns_steps, 1) if muon else 0))
    return batch * heads * length * per_token
  c = chunk_size
  p = c + slots
  omega_band = 2 * c * c * p if slots else 0
  if muon:
    per_chunk = (omega_band + grads(p) + outer_sum(p, c) + sum(2 * c * c * x for x in io)
                 + memory_mlp.newton_schulz_flops(shapes, ns_steps, c)
                 + memory_mlp.forward_flops(shapes, c))
  else:
    read = sum(2 * 2 * c * i * o + 2 * c * p * (i + o) for i, o in shapes)
    per_chunk = 2 * c * c + 2 * c * c * p + omega_band + grads(p) + read + 2 * outer_sum(p)
  return batch * heads * -(-length // c) * per_chunk
