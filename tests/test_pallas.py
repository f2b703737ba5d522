"""Pallas kernels in interpret mode on CPU, against a naive float64 recurrence and the JAX op."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memzoo.models.ops.linear_attention import linear_attention
from memzoo.models.ops.pallas.linear_attention import linear_attention_pallas

# The tests are about math: unoptimised XLA compiles several times faster.
jit = functools.partial(jax.jit, static_argnames=("chunk_size", "scale"),
                        compiler_options={"xla_backend_optimization_level": 0})
pallas = jit(functools.partial(linear_attention_pallas, interpret=True))
jax_op = jit(linear_attention)


def naive_linear_attention(q, k, v, g, s0, scale):
  """Token by token in float64: `S_t = exp(g_t) S_{t-1} + k_t v_t^T`, `o_t = scale S_t^T q_t`."""
  q, k, v, g, s = (np.asarray(a, np.float64) for a in (q, k, v, g, s0))
  o = np.zeros(v.shape)
  for t in range(q.shape[1]):
    s = np.exp(g[:, t])[..., None, None] * s + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
    o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], s)
  return o, s


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
