"""Blockwise feed-forward == the plain feed-forward, with less activation memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memzoo.models.layers import registry
from memzoo.models.ops.blockwise_ffn import blockwise_feedforward


def _swiglu_pair(d_model, chunk_size, param_dtype=jnp.float32):
  """The same SwiGLU parameters, applied at once and blockwise."""
  build = lambda options: registry.build(
      "ffn", "swiglu", {"d_model": d_model, "param_dtype": param_dtype, "swiglu": options},
      rngs=nnx.Rngs(0))
  return build({}), build({"chunk_size": chunk_size})


def _value_and_grads(module, x, cotangent):
  graphdef, params = nnx.split(module)
  f = lambda params, x: jnp.sum(nnx.merge(graphdef, params)(x) * cotangent)
  y = nnx.merge(graphdef, params)(x)
  return (y,) + jax.grad(f, argnums=(0, 1))(params, x)


def test_blockwise_swiglu_equals_plain():
  """T = 37 with chunks of 8: outputs and input gradients are bitwise equal; parameter gradients
  sum the same terms in another order."""
  plain, chunked = _swiglu_pair(16, 8)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 37, 16)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((2, 37, 16)), jnp.float32)
  want = jax.jit(_value_and_grads)(plain, x, cotangent)
  got = jax.jit(_value_and_grads)(chunked, x, cotangent)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[2], want[2])
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_blockwise_swiglu_equals_plain_float64():
  with jax.enable_x64(True):
    plain, chunked = _swiglu_pair(8, 5, jnp.float64)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 23, 8)))
    cotangent = jnp.asarray(rng.standard_normal((1, 23, 8)))
    want = jax.jit(_value_and_grads)(plain, x, cotangent)
    got = jax.jit(_value_and_grads)(chunked, x, cotangent)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_blockwise_feedforward_saves_activation_memory():
  t, d, hidden = 2048, 16, 1024
  w_in = jnp.ones((d, hidden)) / d
  w_out = jnp.ones((hidden, d)) / hidden
  mlp = lambda x: jax.nn.gelu(x @ w_in) @ w_out
  x = jnp.ones((1, t, d))

  def temp_bytes(apply):
    grad = jax.jit(jax.grad(lambda x: jnp.sum(apply(x) ** 2)))
    return grad.lower(x).compile().memory_analysis().temp_size_in_bytes

  hidden_bytes = t * hidden * 4
  assert temp_bytes(mlp) >= hidden_bytes
  assert temp_bytes(lambda x: blockwise_feedforward(mlp, x, 128)) < hidden_bytes // 4


def test_bad_chunk_size_raises():
  with pytest.raises(ValueError, match="chunk_size=0 must be >= 1"):
    blockwise_feedforward(lambda x: x, jnp.ones((1, 4, 2)), 0)
