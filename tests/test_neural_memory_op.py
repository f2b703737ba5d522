"""Exactness of the Titans / ATLAS neural-memory op against float64 loops of the recurrence."""

from functools import partial

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flop_count import dot_equations
from hypothesis import given, settings, strategies as st

from memzoo.models.ops import memory_mlp
from memzoo.models.ops.neural_memory import memory_state, neural_memory, neural_memory_linear
from memzoo.models.ops.polynomial_features import (feature_dim, polynomial_features,
                                                   taylor_coefficients)


@partial(jax.jit, static_argnums=(2, 3))
def _mlp(weights, x, activation, residual):
  """Reference memory network on one token per (batch, head): `x [B, H, D]`."""
  act = memory_mlp.ACTIVATIONS[activation]
  z = x
  for i, w in enumerate(weights):
    z = jnp.einsum("bhi,bhio->bho", z, w)
    if i < len(weights) - 1:
      z = act(z)
  return z + x if residual else z


@partial(jax.jit, static_argnums=(3, 4, 5))
def _token_grad(weights, k, v, activation, residual, clip):
  """Gradient of 1/2 ||M(k) - v||^2 per (batch, head) row, optionally soft-clipped."""
  loss = lambda ws: 0.5 * jnp.sum((_mlp(ws, k, activation, residual) - v) ** 2)  # rows independent
  grads = jax.grad(loss)(weights)
  if clip is None:
    return grads
  norm = jnp.sqrt(sum(jnp.sum(g * g, axis=(-2, -1)) for g in grads))
  factor = jnp.where(norm > 0, clip * jnp.tanh(norm / clip) / jnp.where(norm > 0, norm, 1), 1)
  return tuple(g * factor[..., None, None] for g in grads)


def naive_memory(q, k, v, lr, mom, dec, weights, chunk, *, activation="gelu", residual=False,
                 gamma=None, window=1, clip=None, muon=False, segment_ids=None):
  """Token-by-token loop of the rule: gradients at the chunk-start weights, Omega window of the
  last `window` tokens of the same document, per-sample soft clipping, optional Muon update; where a
  document starts (t > 0) the weights, anchor and momentum of that row reset to `weights` / zeros.
  Differentiable (jnp), float64 under `jax.enable_x64`."""
  b, t_len = q.shape[:2]
  init = tuple(jnp.asarray(x) for x in weights)
  zeros = tuple(jnp.zeros_like(x) for x in init)
  w, s, anchor = init, zeros, init
  start = np.zeros(b, int)  # first token of each row's current document
  rows = lambda m: jnp.asarray(m)[:, None, None, None]
  outs = []
  for t in range(t_len):
    if segment_ids is not None and t:
      new = segment_ids[:, t] != segment_ids[:, t - 1]
      start = np.where(new, t, start)
      w, s, anchor = (tuple(jnp.where(rows(new), a, c) for a, c in zip(fresh, cur))
                      for fresh, cur in ((init, w), (zeros, s), (init, anchor)))
    if t % chunk == 0:
      anchor = w
    grads = zeros
    for i in range(max(0, t - window + 1), t + 1):
      g_i = _token_grad(anchor, k[:, i], v[:, i], activation, residual, clip)
      wgt = rows(i >= start) * (1.0 if gamma is None else gamma[:, i][..., None, None])
      grads = [g + wgt * gi for g, gi in zip(grads, g_i)]
    th, e, a = (x[:, t][..., None, None] for x in (lr, mom, 1 - dec))
    if muon:
      s = tuple(e * si - g for si, g in zip(s, grads))
      w = tuple(a * wi + th * memory_mlp.newton_schulz(si, 5) for wi, si in zip(w, s))
    else:
      s = tuple(e * si - th * g for si, g in zip(s, grads))
      w = tuple(a * wi + si for wi, si in zip(w, s))
    outs.append(_mlp(w, q[:, t], activation, residual))
  return jnp.stack(outs, axis=1), w, s


def linear_loop(q, k, v, lr, mom, dec, m0, s0, chunk):
  """The issue's recurrence for M [Dk, Dv] in numpy float64, gradients at chunk-start weights."""
  m, s = m0.copy(), s0.copy()
  anchor = m
  out = np.zeros(v.shape)
  for t in range(q.shape[1]):
    if t % chunk == 0:
      anchor = m
    kt, vt = k[:, t], v[:, t]                                          # [B, H, D]
    grad = np.einsum("bhi,bho->bhio", kt, np.einsum("bhi,bhio->bho", kt, anchor) - vt)
    s = mom[:, t, :, None, None] * s - lr[:, t, :, None, None] * grad
    m = (1 - dec[:, t, :, None, None]) * m + s
    out[:, t] = np.einsum("bhi,bhio->bho", q[:, t], m)
  return out, m, s


def delta_rule_loop(q, k, v, beta, state):
  """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = q_t^T S_t  (float64)."""
  out = np.zeros(v.shape)
  for t in range(q.shape[1]):
    kt, b = k[:, t], beta[:, t, :, None, None]
    state = state - b * np.einsum("bhi,bhj,bhjo->bhio", kt, kt, state)
    state = state + b * np.einsum("bhi,bho->bhio", kt, v[:, t])
    out[:, t] = np.einsum("bhi,bhio->bho", q[:, t], state)
  return out, state


def _inputs(seed, b, t, h, dk, dv, *, lr_max=0.9):
  r = np.random.default_rng(seed)
  k = r.normal(size=(b, t, h, dk))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  return dict(q=r.normal(size=(b, t, h, dk)), k=k, v=r.normal(size=(b, t, h, dv)),
              lr=r.uniform(0.05, lr_max, (b, t, h)), mom=r.uniform(0.0, 0.95, (b, t, h)),
              dec=r.uniform(0.0, 0.3, (b, t, h)), gamma=r.uniform(0.2, 1.0, (b, t, h)))


def _deep_weights(seed, b, h, d, depth, expansion=2.0):
  r = np.random.default_rng(seed)
  return tuple(r.normal(size=(b, h, i, o)) / np.sqrt(i)
               for i, o in memory_mlp.layer_shapes(d, d, depth, expansion))


def _close(actual, expected, tol=1e-9):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


def _op(q, k, v, lr, mom, dec, weights, chunk, *, window=1, **kw):
  """`neural_memory` from a fresh state, returning (o, weights, momentum)."""
  o, state = neural_memory(q, k, v, lr, mom, dec, chunk_size=chunk,
                           state=memory_state(weights, omega_window=window), **kw)
  return o, state.weights, state.momentum


@settings(max_examples=3, deadline=None)
@given(t=st.integers(1, 11), dk=st.integers(1, 5), dv=st.integers(1, 4),
       chunk=st.sampled_from([1, 2, 3, 5, 16]), seed=st.integers(0, 99))
def test_linear_matches_recurrence(t, dk, dv, chunk, seed):
  """chunk_size=1 is online GD; chunk C is mini-batch GD (C need not divide T); both modes."""
  x = _inputs(seed, 2, t, 2, dk, dv)
  r = np.random.default_rng(seed + 1)
  m0, s0 = r.normal(size=(2, 2, dk, dv)), r.normal(size=(2, 2, dk, dv))
  args = (x["q"], x["k"], x["v"], x["lr"], x["mom"], x["dec"])
  want_o, want_m, want_s = linear_loop(*args, m0, s0, chunk)
  with jax.enable_x64(True):
    for mode in ("chunk", "recurrent"):
      o, (m, s) = neural_memory_linear(*args, chunk_size=chunk, initial_state=(m0, s0), mode=mode)
      _close(o, want_o)
      _close(m, want_m)
      _close(s, want_s)


def test_no_momentum_no_decay_online_is_delta_rule():
  x = _inputs(0, 2, 9, 2, 4, 3)
  zeros = np.zeros_like(x["lr"])
  s0 = np.random.default_rng(1).normal(size=(2, 2, 4, 3))
  want_o, want_s = delta_rule_loop(x["q"], x["k"], x["v"], x["lr"], s0)
  with jax.enable_x64(True):
    o, (m, _) = neural_memory_linear(x["q"], x["k"], x["v"], x["lr"], zeros, zeros, chunk_size=1,
                                     initial_state=(s0, np.zeros_like(s0)))
    _close(o, want_o)
    _close(m, want_s)


def test_matches_delta_rule_op():
  delta_rule = pytest.importorskip("memzoo.models.ops.delta_rule").delta_rule
  x = _inputs(2, 2, 9, 2, 4, 3)
  zeros = np.zeros_like(x["lr"])
  with jax.enable_x64(True):
    o, (m, _) = neural_memory_linear(x["q"], x["k"], x["v"], x["lr"], zeros, zeros, chunk_size=1)
    want_o, want_s = delta_rule(x["q"], x["k"], x["v"], x["lr"], scale=1.0)
    _close(o, want_o, 1e-5)  # delta_rule computes in float32
    _close(m, want_s, 1e-5)


B, T, H, D = 2, 11, 2, 4  # shared by the deep-memory tests below


@pytest.mark.parametrize("case", [
    dict(depth=2, activation="gelu", chunk=3),
    dict(depth=3, activation="silu", residual=True, chunk=4),
    dict(depth=2, chunk=4, window=3, omega=True),           # ATLAS Omega rule, c = 3
    dict(depth=2, chunk=4, clip=0.3),                       # per-sample soft clipping
    dict(depth=2, chunk=4, muon=True),                      # ATLAS Muon update
    dict(depth=1, chunk=3, muon=True, window=2, omega=True),
], ids=["deep", "deep3-residual", "omega", "clip", "muon", "linear-muon-omega"])
def test_deep_memory_and_atlas_options_match_naive(case):
  case = dict(case)
  depth, chunk, window = case.pop("depth"), case.pop("chunk"), case.pop("window", 1)
  x = _inputs(3, B, T, H, D, D, lr_max=0.3)
  w0 = _deep_weights(4, B, H, D, depth)
  ref_kw = {n: case[n] for n in ("activation", "residual", "muon", "clip") if n in case}
  op_kw = {n: case[n] for n in ("activation", "residual", "muon") if n in case}
  if "clip" in case:
    op_kw["grad_clip"] = case["clip"]
  if case.get("omega"):
    ref_kw["gamma"] = op_kw["omega_weights"] = x["gamma"]
  args = (x["q"], x["k"], x["v"], x["lr"], x["mom"], x["dec"])
  with jax.enable_x64(True):
    want_o, want_w, want_s = naive_memory(*args, w0, chunk, window=window, **ref_kw)
    o, w, s = _op(*args, w0, chunk, window=window, **op_kw)
    _close(o, want_o)
    for got, want in zip(w + s, want_w + want_s):
      _close(got, want)


def test_omega_c1_is_base_rule_and_zero_lr_is_no_update():
  x = _inputs(7, B, T, H, D, D, lr_max=0.3)
  w0 = _deep_weights(8, B, H, D, 2)
  with jax.enable_x64(True):
    base = _op(x["q"], x["k"], x["v"], x["lr"] * x["gamma"], x["mom"], x["dec"], w0, 3)
    omega = _op(x["q"], x["k"], x["v"], x["lr"], x["mom"], x["dec"], w0, 3,
                omega_weights=x["gamma"])
    for got, want in zip(jax.tree.leaves(omega), jax.tree.leaves(base)):
      _close(got, want)
    zeros = np.zeros_like(x["lr"])
    o, w, s = _op(x["q"], x["k"], x["v"], zeros, x["mom"], zeros, w0, 3)
    _close(o, np.swapaxes(memory_mlp.forward(w0, np.swapaxes(x["q"], 1, 2), "gelu", False), 1, 2))
    for got, want in zip(w + s, w0 + tuple(map(np.zeros_like, w0))):
      _close(got, want, 0)


def test_streaming_blocks_and_token_steps_equal_one_call():
  """Deep memory + Omega: one chunked call == blocks of any length passing the state == steps."""
  x = _inputs(11, B, 13, H, D, D, lr_max=0.3)
  w0 = _deep_weights(12, B, H, D, 2)
  names = ("q", "k", "v", "lr", "mom", "dec", "gamma")
  kw = dict(chunk_size=4, activation="silu")

  def run(state, xs, mode):
    return neural_memory(*xs[:6], state=state, omega_weights=xs[6], mode=mode, **kw)

  block = lambda lo, hi: [x[n][:, lo:hi] for n in names]

  with jax.enable_x64(True):
    start = memory_state(w0, omega_window=2)
    want_o, want_state = run(start, block(0, 13), "chunk")
    blocks, state = [], start
    for lo, hi in ((0, 6), (6, 13)):  # the second block starts mid-chunk
      o, state = run(state, block(lo, hi), "chunk")
      blocks.append(o)
    steps, step_state = [], start
    step = jax.jit(lambda s, xs: run(s, xs, "recurrent"))
    for t in range(13):
      o, step_state = step(step_state, block(t, t + 1))
      steps.append(o)
    for got, got_state in ((blocks, state), (steps, step_state)):
      _close(np.concatenate(got, axis=1), want_o)
      for a, b in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
        _close(a, b)


def test_bfloat16_inputs_are_computed_in_float32():
  """The precision contract (module doc): bf16 inputs give exactly the float32 computation on the
  same (bf16-representable) values, rounded once at the end; no product runs in bf16."""
  x = _inputs(17, B, T, H, D, D, lr_max=0.3)
  w0 = tuple(jnp.asarray(w, jnp.float32) for w in _deep_weights(18, B, H, D, 2))
  args = [jnp.asarray(x[n], jnp.bfloat16) for n in ("q", "k", "v", "lr", "mom", "dec")]
  run = jax.jit(lambda *a: _op(*a, w0, 3))
  o, w, s = run(*args)
  want_o, want_w, want_s = run(*(a.astype(jnp.float32) for a in args))
  assert o.dtype == jnp.bfloat16 and all(a.dtype == jnp.float32 for a in w + s)
  _close(o.astype(jnp.float32), want_o.astype(jnp.bfloat16).astype(jnp.float32), 0)
  for got, want in zip(w + s, want_w + want_s):
    _close(got, want, 0)
  dtypes = {v.aval.dtype for eqn in dot_equations(jax.make_jaxpr(run)(*args).jaxpr)
            for v in eqn.invars}
  assert dtypes and dtypes <= {jnp.dtype(jnp.float32)}, dtypes


def test_packed_documents_reset_the_memory():
  x = _inputs(13, B, T, H, D, D, lr_max=0.3)
  w0 = _deep_weights(14, B, H, D, 2)
  segment_ids = np.array([[0] * 5 + [1] * 2 + [2] * 4, [0] * 3 + [1] * 8])
  args = (x["q"], x["k"], x["v"], x["lr"], x["mom"], x["dec"])
  reset = (w0, tuple(map(np.zeros_like, w0)))
  with jax.enable_x64(True):
    want = naive_memory(*args, w0, 3, window=2, gamma=x["gamma"], segment_ids=segment_ids)
    for mode in ("chunk", "recurrent"):
      got = _op(*args, w0, 3, window=2, omega_weights=x["gamma"], segment_ids=segment_ids,
                reset_state=reset, mode=mode)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _close(a, b)


def test_gradients_match_naive():
  """Gradients of every input and of the initial weights of a deep memory with Omega (c = 2),
  clipping and document resets, for random cotangents on the outputs and the final state."""
  x = _inputs(15, B, 7, 1, 3, 3, lr_max=0.3)
  w0 = _deep_weights(16, B, 1, 3, 2)
  segment_ids = np.array([[0] * 4 + [1] * 3, [0] * 2 + [1] * 5])

  def op(q, k, v, lr, mom, dec, gamma, weights):
    return _op(q, k, v, lr, mom, dec, weights, 3, window=2, omega_weights=gamma, grad_clip=0.4,
               segment_ids=segment_ids, reset_state=(weights, tuple(map(jnp.zeros_like, weights))))

  def ref(q, k, v, lr, mom, dec, gamma, weights):
    return naive_memory(q, k, v, lr, mom, dec, weights, 3, window=2, gamma=gamma, clip=0.4,
                        segment_ids=segment_ids)

  with jax.enable_x64(True):
    inputs = [jnp.asarray(x[n]) for n in ("q", "k", "v", "lr", "mom", "dec", "gamma")] + [w0]
    r = np.random.default_rng(17)
    cot = [r.normal(size=l.shape) for l in jax.tree.leaves(jax.eval_shape(ref, *inputs))]

    def grads(fn, jit):
      def scalar(*a):
        return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(fn(*a)), cot))
      grad = jax.grad(scalar, argnums=tuple(range(8)))
      return (jax.jit(grad) if jit else grad)(*inputs)

    # The reference runs op by op: compiling its unrolled loop would take longer than running it.
    for a, b in zip(jax.tree.leaves(grads(op, True)), jax.tree.leaves(grads(ref, False))):
      _close(a, b, 1e-8)


def test_newton_schulz_orthogonalises():
  x = np.random.default_rng(19).normal(size=(3, 5, 4))
  with jax.enable_x64(True):
    y = np.asarray(memory_mlp.newton_schulz(jnp.asarray(x), 5))
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  core = np.einsum("bji,bjk,bkl->bil", u, y, np.swapaxes(vt, 1, 2))  # U^T y V: diagonal
  diag = np.diagonal(core, axis1=1, axis2=2)
  np.testing.assert_allclose(core, np.einsum("bi,ij->bij", diag, np.eye(4)), atol=1e-9)
  assert np.all((diag > 0.6) & (diag < 1.25)), diag  # the quintic's band around 1


@pytest.mark.parametrize("change,message", [
    (dict(lr=jnp.zeros((2, 5, 3))), "lr must be"),
    (dict(v=jnp.zeros((2, 4, 2, 3))), "q, k, v"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(mode="parallel"), "mode="),
    (dict(residual=True, v=jnp.zeros((2, 5, 2, 3))), "residual"),
    (dict(activation="relu"), "activation="),
])
def test_bad_arguments_raise(change, message):
  args = dict(q=jnp.zeros((2, 5, 2, 4)), k=jnp.zeros((2, 5, 2, 4)), v=jnp.zeros((2, 5, 2, 4)),
              lr=jnp.zeros((2, 5, 2)), momentum=jnp.zeros((2, 5, 2)), decay=jnp.zeros((2, 5, 2)),
              chunk_size=2)
  args.update(change)
  d_out = args["v"].shape[-1]
  state = memory_state((jnp.zeros((2, 2, 4, d_out)),))
  with pytest.raises(ValueError, match=message):
    neural_memory(**args, state=state)


def test_polynomial_features_give_the_taylor_kernel():
  """phi(q) . phi(k) = sum_i a_i^2 (q . k)^i; with the initial a_i that is exp's Taylor series."""
  r = np.random.default_rng(20)
  q, k = r.normal(size=(5, 3)) / 2, r.normal(size=(5, 3)) / 2
  with jax.enable_x64(True):
    coef = taylor_coefficients(3)
    phi_q, phi_k = polynomial_features(q, coef), polynomial_features(k, coef)
  assert phi_q.shape == (5, feature_dim(3, 3)) == (5, 1 + 3 + 9 + 27)
  got = np.sum(np.asarray(phi_q * phi_k), -1)
  dot = np.sum(q * k, -1)
  np.testing.assert_allclose(got, 1 + dot + dot ** 2 / 2 + dot ** 3 / 6, rtol=1e-12)
