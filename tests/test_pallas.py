"""Pallas kernels in interpret mode on CPU, against a naive float64 recurrence and the JAX op."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memzoo.models.ops.delta_rule import delta_rule
from memzoo.models.ops.linear_attention import linear_attention
from memzoo.models.ops.attention import attention
from memzoo.models.ops.pallas.attention import attention_pallas, flash_attention
from memzoo.models.ops.pallas.delta_rule import delta_rule_pallas
from memzoo.models.ops.pallas.linear_attention import linear_attention_pallas

# The tests are about math: unoptimised XLA compiles several times faster.
jit = functools.partial(jax.jit, static_argnames=("chunk_size", "scale"),
                        compiler_options={"xla_backend_optimization_level": 0})
pallas = jit(functools.partial(linear_attention_pallas, interpret=True))
jax_op = jit(linear_attention)
delta_pallas = jit(functools.partial(delta_rule_pallas, interpret=True))
delta_jax = jit(delta_rule)
attention_kernel = functools.partial(jax.jit, static_argnames=(
    "causal", "window", "block_q", "block_k"), compiler_options={
        "xla_backend_optimization_level": 0})(functools.partial(attention_pallas, interpret=True))


def naive_linear_attention(q, k, v, g, s0, scale):
  """Token by token in float64: `S_t = exp(g_t) S_{t-1} + k_t v_t^T`, `o_t = scale S_t^T q_t`."""
  q, k, v, g, s = (np.asarray(a, np.float64) for a in (q, k, v, g, s0))
  o = np.zeros(v.shape)
  for t in range(q.shape[1]):
    s = np.exp(g[:, t])[..., None, None] * s + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
    o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], s)
  return o, s


def naive_delta_rule(q, k, v, beta, g, s0, scale):
  """Token by token in float64: `S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`."""
  q, k, v, beta, g, s = (np.asarray(a, np.float64) for a in (q, k, v, beta, g, s0))
  o = np.zeros(v.shape)
  for t in range(q.shape[1]):
    s = np.exp(g[:, t])[..., None, None] * s
    error = v[:, t] - np.einsum("bhk,bhkv->bhv", k[:, t], s)
    s = s + np.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * error)
    o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], s)
  return o, s


def naive_attention(q, k, v, causal, window):
  """Softmax attention in float64 from the mask's definition; `(o, lse)`, GQA by repeating k, v."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  qp, kp = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None, :]
  visible = (kp <= qp) if causal else np.ones((q.shape[1], k.shape[1]), bool)
  if window is not None:
    visible &= (qp - kp < window) & (kp - qp < window)
  logits = np.where(visible, np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1]), -np.inf)
  top = np.max(logits, axis=-1, keepdims=True)
  weights = np.exp(logits - top)
  lse = np.log(weights.sum(-1)) + top[..., 0]
  o = np.einsum("bhts,bshd->bthd", weights / weights.sum(-1, keepdims=True), v)
  return o, np.moveaxis(lse, 1, 2)


def inputs(seed, b, t, h, dk, dv):
  """float32 q, k `[B, T, H, Dk]`, v `[B, T, H, Dv]`, log decays `[B, T, H]` < 0, a state."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  g = -np.logaddexp(0.0, rng.standard_normal((b, t, h)) + 1.0)  # -softplus
  return (normal(b, t, h, dk), normal(b, t, h, dk), normal(b, t, h, dv),
          jnp.asarray(g, jnp.float32), normal(b, h, dk, dv))


@settings(max_examples=3, deadline=None)
@given(t=st.integers(1, 40), chunk=st.sampled_from([4, 16]), decay=st.booleans(),
       seed=st.integers(0, 99))
def test_pallas_linear_attention_equals_naive_float64(t, chunk, decay, seed):
  q, k, v, g, s0 = inputs(seed, 2, t, 3, 8, 4)
  o, state = pallas(q, k, v, log_decay=g if decay else None, initial_state=s0, chunk_size=chunk,
                    scale=0.5)
  o_ref, s_ref = naive_linear_attention(q, k, v, g if decay else jnp.zeros_like(g), s0, 0.5)
  np.testing.assert_allclose(o, o_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state, s_ref, rtol=1e-4, atol=1e-4)


def test_pallas_linear_attention_equals_the_jax_op_in_bfloat16():
  """Defaults (scale, zero initial state), bf16 inputs, T = 20 over chunks of 8."""
  q, k, v, g, _ = inputs(0, 1, 20, 2, 8, 8)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  o, state = pallas(q, k, v, log_decay=g, chunk_size=8)
  o_jax, s_jax = jax_op(q, k, v, log_decay=g, chunk_size=8)
  assert o.dtype == jnp.bfloat16 and state.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(o, np.float32), np.asarray(o_jax, np.float32), atol=2e-2)
  np.testing.assert_allclose(state, s_jax, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,name", [(dict(log_decay=jnp.zeros((1, 4, 2, 8))), "log_decay"),
                                         (dict(chunk_size=0), "chunk_size")])
def test_pallas_linear_attention_rejects_what_it_does_not_do(kwargs, name):
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match=name):
    linear_attention_pallas(q, q, q, interpret=True, **kwargs)


@settings(max_examples=3, deadline=None)
@given(t=st.integers(1, 40), chunk=st.sampled_from([4, 16]), decay=st.booleans(),
       seed=st.integers(0, 99))
def test_pallas_delta_rule_equals_naive_float64(t, chunk, decay, seed):
  q, k, v, g, s0 = inputs(seed, 2, t, 3, 8, 4)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  beta = jax.nn.sigmoid(inputs(seed + 1, 2, t, 3, 1, 1)[3])
  g = g if decay else jnp.zeros_like(g)
  o, state = delta_pallas(q, k, v, beta, log_decay=g if decay else None, initial_state=s0,
                          chunk_size=chunk, scale=0.5)
  o_ref, s_ref = naive_delta_rule(q, k, v, beta, g, s0, 0.5)
  np.testing.assert_allclose(o, o_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state, s_ref, rtol=1e-4, atol=1e-4)


def test_pallas_delta_rule_equals_the_jax_op_in_bfloat16():
  """Defaults (scale, zero initial state), bf16 inputs, a gate, T = 20 over chunks of 8."""
  q, k, v, g, _ = inputs(0, 1, 20, 2, 8, 8)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  beta = jnp.full(g.shape, 0.7)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  o, state = delta_pallas(q, k, v, beta, log_decay=g, chunk_size=8)
  o_jax, s_jax = delta_jax(q, k, v, beta, log_decay=g, chunk_size=8)
  assert o.dtype == jnp.bfloat16 and state.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(o, np.float32), np.asarray(o_jax, np.float32), atol=2e-2)
  np.testing.assert_allclose(state, s_jax, rtol=1e-4, atol=1e-4)


@settings(max_examples=4, deadline=None)
@given(t=st.integers(1, 30), extra_keys=st.integers(0, 9), block_q=st.sampled_from([4, 8, 16]),
       block_k=st.sampled_from([4, 8]), causal=st.booleans(),
       window=st.sampled_from([None, 1, 5]), gqa=st.booleans(), seed=st.integers(0, 99))
def test_pallas_attention_equals_naive_float64(t, extra_keys, block_q, block_k, causal, window,
                                               gqa, seed):
  """Outputs and log-sum-exp; blocks that do not divide T or S; S >= T (a query sees a key)."""
  rng = np.random.default_rng(seed)
  s, h, kv_heads = t + extra_keys * (not causal), 4, 2 if gqa else 4
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q, k, v = normal(2, t, h, 8), normal(2, s, kv_heads, 8), normal(2, s, kv_heads, 6)
  o, lse = attention_kernel(q, k, v, causal=causal, window=window, block_q=block_q,
                            block_k=block_k)
  o_ref, lse_ref = naive_attention(q, k, v, causal, window)
  np.testing.assert_allclose(o, o_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(lse, lse_ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=3, deadline=None)
@given(t=st.integers(1, 24), block_q=st.sampled_from([4, 8]), block_k=st.sampled_from([4, 16]),
       causal=st.booleans(), window=st.sampled_from([None, 3]), seed=st.integers(0, 99))
def test_flash_attention_gradients_equal_the_naive_form(t, block_q, block_k, causal, window, seed):
  """The kernel forward with the JAX blockwise backward: dq, dk, dv (GQA, blocks that do not
  divide T) equal autodiff through the naive form, which test_attention checks in float64."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q, cotangent = normal(2, t, 4, 8), normal(2, t, 4, 8)
  k, v = normal(2, t, 2, 8), normal(2, t, 2, 8)
  flash = lambda *qkv: jnp.sum(flash_attention(*qkv, causal, window, None, block_q, block_k, True)
                               * cotangent)
  naive = lambda *qkv: jnp.sum(attention(*qkv, causal=causal, window=window) * cotangent)
  got = jax.jit(jax.grad(flash, argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(naive, argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_pallas_attention_gives_zeros_to_a_query_that_sees_no_key():
  """Non-causal window 2 with 10 queries over 3 keys: query i sees key j iff |i - j| < 2, so
  queries 4.. see nothing."""
  q, k = jnp.ones((1, 10, 1, 4)), jnp.ones((1, 3, 1, 4))
  o, lse = attention_kernel(q, k, k, causal=False, window=2, block_q=4, block_k=2)
  assert np.all(np.asarray(o[0, 4:]) == 0) and np.all(np.isneginf(lse[0, 4:]))
  np.testing.assert_allclose(o[0, :4], 1.0)


@pytest.mark.parametrize("call,name", [
    (lambda x: delta_rule_pallas(x, x, x, x[..., 0], log_decay=x, interpret=True), "log_decay"),
    (lambda x: delta_rule_pallas(x, x, x, x, interpret=True), "beta"),
    (lambda x: attention_pallas(x, x, x, block_k=0, interpret=True), "block_k"),
    (lambda x: attention_pallas(x, x[:, :, :1].repeat(3, 2), x, interpret=True), "dividing H")])
def test_pallas_kernels_reject_what_they_do_not_do(call, name):
  with pytest.raises(ValueError, match=name):
    call(jnp.zeros((1, 4, 2, 8)))
