"""Softmax attention: naive == float64 reference; blockwise == naive (outputs and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.attention import attention

_UNWRITTEN = 2 ** 30
_attention = jax.jit(attention, static_argnames=("causal", "window", "scale", "impl", "block_q",
                                                 "block_k"))


def reference_attention(q, k, v, *, causal, window=None, segment_ids=None, q_positions=None,
                        kv_positions=None):
  """Float64 numpy attention, one (batch, head, query) at a time."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, d = q.shape
  s, kh = k.shape[1:3]
  qp = np.broadcast_to(np.arange(t) if q_positions is None else q_positions, (b, t))
  kp = np.broadcast_to(np.arange(s) if kv_positions is None else kv_positions, (b, s))
  out = np.zeros((b, t, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      kv_head = hi // (h // kh)
      for i in range(t):
        seen = np.ones(s, bool)
        if causal:
          seen &= kp[bi] <= qp[bi, i]
        if window is not None:
          seen &= np.abs(qp[bi, i] - kp[bi]) < window
        if segment_ids is not None:
          seen &= np.asarray(segment_ids)[bi] == np.asarray(segment_ids)[bi, i]
        if not seen.any():
          continue
        logits = k[bi, seen, kv_head] @ q[bi, i, hi] / np.sqrt(d)
        p = np.exp(logits - logits.max())
        out[bi, i, hi] = (p / p.sum()) @ v[bi, seen, kv_head]
  return out


def _inputs(seed, b, t, s, h, kh, d, dtype=jnp.float32):
  """q, k, v in `dtype` and a float32 output cotangent (numpy draws: no compile per shape)."""
  rng = np.random.default_rng(seed)
  shapes = [(b, t, h, d), (b, s, kh, d), (b, s, kh, d)]
  q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in shapes)
  return q, k, v, jnp.asarray(rng.standard_normal((b, t, h, d), np.float32))


def _segments(b, t, seed):
  """`[B, T]` packed documents with random boundaries (non-decreasing ids)."""
  starts = np.random.default_rng(seed).random((b, t)) < 0.15
  starts[:, 0] = True
  return jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)


def _value_and_grads(impl, q, k, v, cotangent, **kw):
  def f(q, k, v):
    return attention(q, k, v, impl=impl, **kw)
  out, vjp = jax.vjp(f, q, k, v)
  return (out,) + vjp(cotangent.astype(out.dtype))


def _assert_blockwise_matches_naive(q, k, v, cotangent, tol=1e-5, **kw):
  naive = jax.jit(lambda *a: _value_and_grads("naive", *a, **kw))(q, k, v, cotangent)
  blockwise = jax.jit(lambda *a: _value_and_grads("blockwise", *a, **kw))(q, k, v, cotangent)
  for name, a, b in zip(("out", "dq", "dk", "dv"), naive, blockwise):
    np.testing.assert_allclose(b, a, rtol=tol, atol=tol, err_msg=name)
  return blockwise[0]


@pytest.mark.parametrize("causal,window,segments,kv_heads", [
    (True, None, False, 4), (False, None, False, 4), (True, 5, False, 2), (False, 6, True, 1),
    (True, None, True, 2)])
def test_naive_matches_float64_reference(causal, window, segments, kv_heads):
  q, k, v, _ = _inputs(0, 2, 19, 19, 4, kv_heads, 8)
  segment_ids = _segments(2, 19, 1) if segments else None
  out = _attention(q, k, v, causal=causal, window=window, segment_ids=segment_ids)
  want = reference_attention(q, k, v, causal=causal, window=window, segment_ids=segment_ids)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_naive_decode_positions_match_reference():
  q, k, v, _ = _inputs(1, 2, 1, 12, 4, 2, 8)
  kv_positions = jnp.where(jnp.arange(12) < 7, jnp.arange(12), _UNWRITTEN)[None]
  q_positions = jnp.array([[6], [3]])
  out = _attention(q, k, v, q_positions=q_positions, kv_positions=kv_positions)
  want = reference_attention(q, k, v, causal=True, q_positions=q_positions,
                             kv_positions=np.broadcast_to(kv_positions, (2, 12)))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def _autodiff_reference(q, k, v, cotangent, *, causal, window, segment_ids):
  """Float64 outputs and gradients by autodiff through a plain masked softmax."""
  t, s = q.shape[1], k.shape[1]
  qp, kp = np.arange(t)[:, None], np.arange(s)[None]
  seen = np.ones((t, s), bool) if not causal else kp <= qp
  if window is not None:
    seen = seen & (np.abs(qp - kp) < window)
  seen = np.broadcast_to(seen, (q.shape[0], t, s))
  if segment_ids is not None:
    ids = np.asarray(segment_ids)
    seen = seen & (ids[:, :, None] == ids[:, None, :])
  group = q.shape[2] // k.shape[2]

  def f(q, k, v):
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    probs = jax.nn.softmax(jnp.where(seen[:, None], logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", jnp.where(seen[:, None], probs, 0.0), v)

  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a), jnp.float64) for a in (q, k, v)]
    out, vjp = jax.vjp(f, *args)
    return (out,) + vjp(jnp.asarray(np.asarray(cotangent), jnp.float64))


@pytest.mark.parametrize("causal,window,segments,kv_heads", [
    (True, None, False, 4), (False, 6, True, 1), (True, 5, True, 2)])
def test_naive_gradients_match_float64_autodiff(causal, window, segments, kv_heads):
  """The naive form's hand-written backward against autodiff in float64."""
  q, k, v, cotangent = _inputs(2, 2, 21, 21, 4, kv_heads, 8)
  segment_ids = _segments(2, 21, 3) if segments else None
  kw = dict(causal=causal, window=window, segment_ids=segment_ids)
  got = jax.jit(lambda *a: _value_and_grads("naive", *a, **kw))(q, k, v, cotangent)
  want = _autodiff_reference(q, k, v, cotangent, **kw)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("causal,window,segments,kv_heads,block_q,block_k", [
    (True, None, False, 2, 16, 32),   # T = 75: no block size divides it
    (False, 20, True, 1, 32, 16),     # sliding window, MQA, packed documents
    (True, 9, True, 4, 25, 75),
])
def test_blockwise_matches_naive(causal, window, segments, kv_heads, block_q, block_k):
  q, k, v, cotangent = _inputs(2, 2, 75, 75, 4, kv_heads, 8)
  segment_ids = _segments(2, 75, 3) if segments else None
  _assert_blockwise_matches_naive(q, k, v, cotangent, causal=causal, window=window,
                                  segment_ids=segment_ids, block_q=block_q, block_k=block_k)


def test_blockwise_decode_against_cache():
  """One query per sequence against a half-written cache (the layer's decode call)."""
  q, k, v, cotangent = _inputs(4, 2, 1, 40, 4, 2, 8)
  kv_positions = jnp.where(jnp.arange(40) < 23, jnp.arange(40), _UNWRITTEN)[None]
  _assert_blockwise_matches_naive(q, k, v, cotangent, q_positions=jnp.array([[22], [9]]),
                                  kv_positions=kv_positions, block_q=8, block_k=16)


def test_query_that_sees_nothing_gets_zeros():
  q, k, v, cotangent = _inputs(5, 1, 6, 10, 2, 2, 4)
  q_positions = jnp.arange(6)[None]
  kv_positions = (3 + jnp.arange(10))[None]  # queries 0..2 precede every key
  kw = dict(q_positions=q_positions, kv_positions=kv_positions, block_q=4, block_k=4)
  out = _assert_blockwise_matches_naive(q, k, v, cotangent, **kw)
  np.testing.assert_array_equal(out[:, :3], 0.0)


def test_blockwise_bfloat16_inputs():
  q, k, v, cotangent = _inputs(6, 1, 33, 33, 4, 2, 8, jnp.bfloat16)
  naive = jax.jit(lambda *a: _value_and_grads("naive", *a))(q, k, v, cotangent)
  blockwise = jax.jit(lambda *a: _value_and_grads("blockwise", *a, block_q=8, block_k=16))(
      q, k, v, cotangent)
  for a, b in zip(naive, blockwise):
    assert b.dtype == a.dtype == jnp.bfloat16
    np.testing.assert_allclose(b.astype(jnp.float32), a.astype(jnp.float32), atol=5e-2)


def test_blockwise_memory_is_linear_in_length():
  """The backward of the blockwise form never holds a [T, S] score matrix."""
  t = 1024
  q, k, v, cotangent = _inputs(7, 1, t, t, 1, 1, 16)

  def temp_bytes(impl):
    f = jax.jit(lambda *a: _value_and_grads(impl, *a, block_q=64, block_k=64))
    return f.lower(q, k, v, cotangent).compile().memory_analysis().temp_size_in_bytes

  score_bytes = t * t * 4
  assert temp_bytes("naive") >= score_bytes
  assert temp_bytes("blockwise") < score_bytes // 8


@settings(max_examples=4, deadline=None)
@given(b=st.integers(1, 2), t=st.integers(1, 40), heads=st.sampled_from([(2, 1), (4, 2), (3, 3)]),
       d=st.sampled_from([4, 8]), causal=st.booleans(),
       window=st.one_of(st.none(), st.integers(1, 12)), segments=st.booleans(),
       block_q=st.sampled_from([3, 8, 16]), block_k=st.sampled_from([5, 8, 64]),
       seed=st.integers(0, 2 ** 16))
def test_blockwise_matches_naive_hypothesis(b, t, heads, d, causal, window, segments, block_q,
                                            block_k, seed):
  q, k, v, cotangent = _inputs(seed, b, t, t, heads[0], heads[1], d)
  segment_ids = _segments(b, t, seed + 1) if segments else None
  _assert_blockwise_matches_naive(q, k, v, cotangent, causal=causal, window=window,
                                  segment_ids=segment_ids, block_q=block_q, block_k=block_k)


@pytest.mark.parametrize("kwargs,match", [
    (dict(impl="flash"), "unknown attention impl"),
    (dict(impl="blockwise", block_q=0), "block sizes must be >= 1"),
])
def test_bad_options_raise(kwargs, match):
  q, k, v, _ = _inputs(0, 1, 4, 4, 2, 2, 4)
  with pytest.raises(ValueError, match=match):
    attention(q, k, v, **kwargs)


def test_bad_shapes_raise():
  q, k, v, _ = _inputs(0, 1, 4, 6, 3, 2, 4)
  with pytest.raises(ValueError, match="not a multiple of kv heads"):
    attention(q, k, v)
  q, k, v, _ = _inputs(0, 1, 4, 6, 2, 2, 4)
  with pytest.raises(ValueError, match="segment_ids need self-attention"):
    attention(q, k, v, segment_ids=jnp.zeros((1, 4), jnp.int32))
  k2, v2 = jnp.concatenate([k, k]), jnp.concatenate([v, v])  # batch 2 against q's 1
  for bad_q, bad_k, bad_v in ((q[0], k[0], v[0]), (q, k, v[:, :-1]), (q, k[..., :-1], v),
                              (q, k2, v2)):
    with pytest.raises(ValueError, match=r"pass q \[B, T, H, D\], k \[B, S, K, D\]"):
      attention(bad_q, bad_k, bad_v)
