"""`ops.dense`: the hand-written backwards == autodiff of the plain products, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.dense import contract, matmul, matmul_transposed

_dims = st.lists(st.integers(1, 6), min_size=1, max_size=2)


@settings(deadline=None, max_examples=16)
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=3), inner=_dims, outer=_dims,
       seed=st.integers(0, 2 ** 16))
def test_matches_tensordot_autodiff_float64(lead, inner, outer, seed):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((*lead, *inner)))
    w = jnp.asarray(rng.standard_normal((*inner, *outer)))
    cotangent = jnp.asarray(rng.standard_normal((*lead, *outer)))
    got, got_vjp = jax.vjp(lambda x, w: contract(x, w, len(inner)), x, w)
    want, want_vjp = jax.vjp(lambda x, w: jnp.tensordot(x, w, len(inner)), x, w)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("x", "w"), got_vjp(cotangent), want_vjp(cotangent)):
      assert a.shape == b.shape, name
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)


@settings(deadline=None, max_examples=12)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=st.integers(1, 7),
       i=st.integers(1, 7), o=st.integers(1, 7), seed=st.integers(0, 2 ** 16))
def test_batched_matmuls_match_autodiff_float64(lead, n, i, o, seed):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    w = jnp.asarray(rng.standard_normal((*lead, i, o)))
    cases = ((matmul, lambda x, w: x @ w, (*lead, n, i), (*lead, n, o)),
             (matmul_transposed, lambda x, w: x @ jnp.swapaxes(w, -1, -2), (*lead, n, o),
              (*lead, n, i)))
    for op, plain, x_shape, y_shape in cases:
      x = jnp.asarray(rng.standard_normal(x_shape))
      cotangent = jnp.asarray(rng.standard_normal(y_shape))
      got, got_vjp = jax.vjp(op, x, w)
      want, want_vjp = jax.vjp(plain, x, w)
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
      for a, b in zip(got_vjp(cotangent), want_vjp(cotangent)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=op.__name__)
