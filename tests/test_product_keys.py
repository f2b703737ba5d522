"""Product-key top-k and the weighted gather (memzoo/models/ops/product_keys.py) against brute force
and dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.product_keys import (gathered_dot, product_key_search, product_topk,
                                            weighted_gather)


@settings(max_examples=10, deadline=None)
@given(data=st.data(), n_a=st.integers(1, 9), n_b=st.integers(1, 9), batch=st.integers(1, 3),
       seed=st.integers(0, 2 ** 16))
def test_product_topk_equals_brute_force_over_all_pairs(data, n_a, n_b, batch, seed):
  k = data.draw(st.integers(1, min(n_a, n_b)))
  rng = np.random.default_rng(seed)
  s_a, s_b = rng.normal(size=(batch, n_a)), rng.normal(size=(batch, n_b))
  with jax.enable_x64(True):
    scores, slots = jax.jit(product_topk, static_argnums=2)(jnp.asarray(s_a), jnp.asarray(s_b), k)
  every_pair = (s_a[:, :, None] + s_b[:, None, :]).reshape(batch, n_a * n_b)
  best = np.argsort(-every_pair, axis=-1)[:, :k]
  np.testing.assert_array_equal(slots, best)
  np.testing.assert_allclose(scores, np.take_along_axis(every_pair, best, -1), rtol=1e-12)


@settings(max_examples=6, deadline=None)
@given(heads=st.integers(1, 3), n=st.integers(2, 7), half=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_product_key_search_equals_brute_force_over_all_slots(heads, n, half, seed):
  k = min(n, 3)
  rng = np.random.default_rng(seed)
  q, keys = rng.normal(size=(2, 5, heads, 2 * half)), rng.normal(size=(heads, 2, n, half))
  with jax.enable_x64(True):
    scores, slots = jax.jit(product_key_search, static_argnums=2)(jnp.asarray(q),
                                                                  jnp.asarray(keys), k)
  # Slot i * n + j has the full key (K_a[i], K_b[j]); score it against the whole query.
  full_keys = np.concatenate([np.repeat(keys[:, 0], n, axis=1), np.tile(keys[:, 1], (1, n, 1))],
                             axis=-1)  # [H, n^2, 2 * half]
  every_slot = np.einsum("bthd,hnd->bthn", q, full_keys)
  best = np.argsort(-every_slot, axis=-1)[..., :k]
  np.testing.assert_array_equal(slots, best)
  np.testing.assert_allclose(scores, np.take_along_axis(every_slot, best, -1), rtol=1e-10)


def test_product_topk_rejects_k_above_the_sub_key_count():
  with pytest.raises(ValueError, match="k=5"):
    product_topk(jnp.zeros((2, 4)), jnp.zeros((2, 8)), 5)


def test_product_key_search_rejects_mismatched_query_width():
  with pytest.raises(ValueError, match="queries"):
    product_key_search(jnp.zeros((3, 2, 6)), jnp.zeros((2, 2, 4, 4)), 2)


def _repeated_rows(rng, num_rows, shape):
  """Rows with guaranteed repeats, inside one bag and across bags."""
  rows = rng.integers(0, num_rows, size=shape)
  rows[..., 1] = rows[..., 0]
  rows[-1] = rows[0]
  return rows


def _check_against_dense(op, dense, args, seed=0):
  """`op(*args) == dense(*args)` in float64, and so are the gradients wrt every float argument."""
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    args = [jnp.asarray(a) for a in args]
    y, y_ref = op(*args), dense(*args)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    cotangent = jnp.asarray(rng.normal(size=y.shape))
    floats = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating)]
    grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * cotangent), argnums=floats)(*args)
    for g, g_ref in zip(grad(op), grad(dense)):
      np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


def test_weighted_gather_and_its_gradients_equal_a_dense_one_hot_reference():
  rng = np.random.default_rng(0)
  table, weights = rng.normal(size=(11, 5)), rng.normal(size=(3, 4, 6))
  rows = _repeated_rows(rng, 11, (3, 4, 6))
  one_hot = lambda r, t: jax.nn.one_hot(r, t.shape[0], dtype=t.dtype)
  dense = lambda t, r, w: jnp.einsum("...kn,...k,nd->...d", one_hot(r, t), w, t)
  _check_against_dense(weighted_gather, dense, (table, rows, weights))


def test_gathered_dot_and_its_gradients_equal_a_dense_one_hot_reference():
  rng = np.random.default_rng(1)
  table, x = rng.normal(size=(9, 5)), rng.normal(size=(3, 4, 5))
  rows = _repeated_rows(rng, 9, (3, 4, 6))
  one_hot = lambda r, t: jax.nn.one_hot(r, t.shape[0], dtype=t.dtype)
  dense = lambda t, r, v: jnp.einsum("...kn,nd,...d->...k", one_hot(r, t), t, v)
  _check_against_dense(gathered_dot, dense, (table, rows, x))


def test_weighted_gather_reads_rows_without_a_one_hot_matmul():
  table, rows, weights = jnp.ones((64, 8)), jnp.zeros((4, 3), jnp.int32), jnp.ones((4, 3))
  forward = str(jax.make_jaxpr(weighted_gather)(table, rows, weights))
  backward = str(jax.make_jaxpr(jax.grad(lambda t: weighted_gather(t, rows, weights).sum()))(table))
  assert "gather" in forward and "dot_general" not in forward
  assert "scatter-add" in backward and "dot_general" not in backward


def test_low_precision_tables_accumulate_in_float32():
  table = jnp.full((4, 3), 1.0 + 2 ** -7, jnp.bfloat16)  # a bfloat16 sum would stall at 256
  out = weighted_gather(table, jnp.zeros((1, 256), jnp.int32), jnp.ones((1, 256), jnp.bfloat16))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, 256 * (1.0 + 2 ** -7), rtol=1e-6)
