"""causal_conv1d (the short conv) against a float64 per-token loop: outputs, final state, and the
gradients of its custom backward wrt the inputs, weights and initial state."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.conv import causal_conv1d


def naive_conv(x, weight, segment_ids, initial_state):
  """y_t = sum_j w_j x_{t-(K-1)+j}, reading the initial state before position 0; with segments a
  tap that reaches into an earlier segment or the initial state reads 0."""
  width = weight.shape[0]
  b, t, c = x.shape
  history = jnp.concatenate([initial_state, x], axis=1)
  rows = []
  for i in range(t):
    y = jnp.zeros((b, c), x.dtype)
    for j in range(width):
      source = i - (width - 1) + j
      tap = history[:, source + width - 1]
      if segment_ids is not None and source != i:
        same = (segment_ids[:, max(source, 0)] == segment_ids[:, i]) & (source >= 0)
        tap = jnp.where(same[:, None], tap, 0.0)
      y = y + weight[j] * tap
    rows.append(y)
  return jnp.stack(rows, axis=1), history[:, t:]


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 21), c=st.integers(1, 6), width=st.integers(1, 5),
       segments=st.booleans(), carried=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_matches_float64_loop_with_gradients(b, t, c, width, segments, carried, seed):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    x, weight = jnp.asarray(rng.normal(size=(b, t, c))), jnp.asarray(rng.normal(size=(width, c)))
    state = jnp.asarray(rng.normal(size=(b, width - 1, c)))
    ids = jnp.asarray(np.sort(rng.integers(0, 3, size=(b, t)), axis=1)) if segments else None
    ct_y = jnp.asarray(rng.normal(size=(b, t, c)))
    ct_state = jnp.asarray(rng.normal(size=state.shape))

    def outputs(fn):
      def loss(x, weight, state):
        y, final = fn(x, weight, ids, state if carried else jnp.zeros_like(state))
        return jnp.sum(y * ct_y) + jnp.sum(final * ct_state), (y, final)
      grads, (y, final) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(x, weight, state)
      return y, final, grads

    got = outputs(lambda x, w, ids, s: causal_conv1d(x, w, segment_ids=ids, initial_state=s))
    want = outputs(naive_conv)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_float32_and_bfloat16_inputs_keep_their_dtype():
  x = jnp.ones((1, 5, 3), jnp.bfloat16)
  y, state = causal_conv1d(x, jnp.ones((4, 3), jnp.float32))
  assert y.dtype == state.dtype == jnp.bfloat16
  grads = jax.grad(lambda x, w: jnp.sum(causal_conv1d(x, w)[0].astype(jnp.float32)),
                   argnums=(0, 1))(x, jnp.ones((4, 3), jnp.float32))
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(grads[1], np.float32), [[2, 2, 2], [3, 3, 3], [4, 4, 4],
                                                                 [5, 5, 5]])
