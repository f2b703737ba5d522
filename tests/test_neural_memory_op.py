"""Exactness of the Titans / ATLAS neural-memory op against float64 loops of the recurrence."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from memzoo.models.ops import memory_mlp
from memzoo.models.ops.neural_memory import memory_state, neural_memory, neural_memory_linear


def _mlp(weights, x, activation, residual):
  """Reference memory network on one token per (batch, head): `x [B, H, D]`."""
  act = memory_mlp.ACTIVATIONS[activation]
  z = x
  for i, w in enumerate(weights):
    z = jnp.einsum("bhi,bhio->bho", z, w)
    if i < len(weights) - 1:
      z = act(z)
  return z + x if residual else z


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
      def loss(ws, i=i):  # summed over (batch, head): each row's weights see only their own loss
        return 0.5 * jnp.sum((_mlp(ws, k[:, i], activation, residual) - v[:, i]) ** 2)
      g_i = jax.grad(loss)(anchor)
      if clip is not None:
        norm = jnp.sqrt(sum(jnp.sum(g * g, axis=(-2, -1)) for g in g_i))
        factor = jnp.where(norm > 0, clip * jnp.tanh(norm / clip) / jnp.where(norm > 0, norm, 1), 1)
        g_i = [g * factor[..., None, None] for g in g_i]
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


@settings(max_examples=4, deadline=None)
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
    _close(o, want_o)
    _close(m, want_s)


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
