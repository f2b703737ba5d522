"""The SwiGLU op's hand-written backward == autodiff of the plain formula, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.swiglu import swiglu


def _plain(x, w_gate, w_up, w_down):
  return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


@settings(deadline=None, max_examples=12)
@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=3), d=st.integers(1, 9),
       hidden=st.integers(1, 13), d_out=st.integers(1, 7), seed=st.integers(0, 2 ** 16))
def test_matches_autodiff_float64(lead, d, hidden, d_out, seed):
  rng = np.random.default_rng(seed)
  shapes = [(*lead, d), (d, hidden), (d, hidden), (hidden, d_out)]
  with jax.enable_x64(True):
    args = [jnp.asarray(rng.standard_normal(s) * 2) for s in shapes]
    cotangent = jnp.asarray(rng.standard_normal((*lead, d_out)))
    got, got_vjp = jax.vjp(swiglu, *args)
    want, want_vjp = jax.vjp(_plain, *args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("x", "w_gate", "w_up", "w_down"), got_vjp(cotangent),
                          want_vjp(cotangent)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)
