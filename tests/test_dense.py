"""`ops.dense.contract`'s hand-written backward == autodiff of `jnp.tensordot`, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.dense import contract

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
