"""The pkm and PEER feed-forward layers against naive float64 references (every slot scored, dense
one-hot reads), their sown reads and their optimizer groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memzoo.models.layers import registry
from memzoo.models.layers.common import DEFAULT_GROUP, MEMORY_VALUES, optimizer_groups
from memzoo.models.ops.memory_usage import find_reads, memory_usage, slot_counts, usage_stats

pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow:DeprecationWarning")

D, N_KEYS, HEADS, TOPK, K_DIM = 12, 5, 2, 3, 8


def _layer(name, dtype=jnp.float64, **options):
  cfg = {"d_model": D, "param_dtype": dtype,
         name: dict(n_keys=N_KEYS, heads=HEADS, topk=TOPK, k_dim=K_DIM, **options)}
  return registry.build("ffn", name, cfg, rngs=nnx.Rngs(0))


def _reference_slots(router, x):
  """Scores every one of the n_keys^2 slots with the full product key; brute-force top-k."""
  query = router["query"]
  q = jnp.einsum("...d,dhcf->...hcf", x, query["kernel"][...]) + query["bias"][...]
  q = q / jnp.sqrt(jnp.mean(q * q, -1, keepdims=True) + 1e-6) * router["query_norm"]["scale"][...]
  keys = router["keys"][...]
  keys = keys / jnp.sqrt(jnp.sum(keys * keys, -1, keepdims=True) + 1e-6)
  s_a = jnp.einsum("...hf,hnf->...hn", q[..., 0, :], keys[:, 0])
  s_b = jnp.einsum("...hf,hnf->...hn", q[..., 1, :], keys[:, 1])
  every_slot = (s_a[..., :, None] + s_b[..., None, :]).reshape(*s_a.shape[:-1], N_KEYS ** 2)
  scores, slots = jax.lax.top_k(every_slot, TOPK)
  return jax.nn.softmax(scores, -1), slots


def _dense_read(table, weights, slots):
  """`sum_h sum_k w_hk table[slot_hk]` as a one-hot matmul over all rows."""
  one_hot = jax.nn.one_hot(slots, table.shape[0], dtype=table.dtype)  # [..., H, k, N]
  return jnp.einsum("...hkn,...hk,nd->...d", one_hot, weights, table)


def pkm_reference(p, x):
  weights, slots = _reference_slots(p["router"], x)
  read = _dense_read(p["values"][...], weights, slots)
  return (read * jax.nn.silu(x @ p["gate"]["kernel"][...])) @ p["out"]["kernel"][...]


def peer_reference(p, x):
  weights, slots = _reference_slots(p["router"], x)
  one_hot = jax.nn.one_hot(slots, N_KEYS ** 2, dtype=x.dtype)
  hidden = jax.nn.gelu(jnp.einsum("...hkn,nd,...d->...hk", one_hot, p["down"][...], x))
  return _dense_read(p["up"][...], weights * hidden, slots)


@pytest.mark.parametrize("name,reference", [("pkm", pkm_reference), ("peer", peer_reference)])
def test_layer_and_gradients_equal_float64_reference(name, reference):
  with jax.enable_x64(True):
    graphdef, params = nnx.split(_layer(name))
    layer = lambda p, x: nnx.merge(graphdef, p)(x)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, D)))
    cotangent = jnp.asarray(rng.normal(size=x.shape))

    def output_and_grads(f):
      loss = lambda p, x: (jnp.sum(f(p, x) * cotangent), f(p, x))
      (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
      return y, grads

    (y, (g_params, g_x)), (y_ref, (r_params, r_x)) = map(output_and_grads, (layer, reference))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_x, r_x, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6),
                 g_params, r_params)


def test_pkm_with_shared_values_reads_the_table_it_is_given():
  with jax.enable_x64(True):
    own = _layer("pkm")
    shared = _layer("pkm", memory_share_values=True)
    assert shared.values is None
    for part in ("router", "gate", "out"):
      nnx.update(getattr(shared, part), nnx.state(getattr(own, part)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, D)))
    np.testing.assert_allclose(shared(x, values=own.values), own(x), rtol=1e-12)
    with pytest.raises(ValueError, match="values="):
      shared(x)
    with pytest.raises(ValueError, match="values="):
      own(x, values=own.values)


@pytest.mark.parametrize("name", ["pkm", "peer"])
def test_reads_are_sown_with_the_slots_that_were_read(name):
  graphdef, params = nnx.split(_layer(name, jnp.float32))
  x = jax.random.normal(jax.random.key(0), (2, 5, D))
  forward = jax.jit(lambda p, x: nnx.capture(nnx.merge(graphdef, p), nnx.Intermediate)(x))
  _, intermediates = forward(params, x)
  reads = find_reads(intermediates)
  assert len(reads) == 1
  (read,) = reads.values()
  _, expected = jax.jit(lambda p, x: nnx.merge(graphdef, p).router(x))(params, x)
  np.testing.assert_array_equal(read.slots, expected)
  assert (read.num_slots, read.n_keys) == (N_KEYS ** 2, N_KEYS)
  counts = np.bincount(np.asarray(expected).ravel(), minlength=N_KEYS ** 2)
  np.testing.assert_array_equal(slot_counts(read), counts)
  stats = memory_usage(read)
  np.testing.assert_allclose(stats["fraction_read"], np.mean(counts > 0), rtol=1e-6)


@pytest.mark.parametrize("counts,expected", [
    (np.ones(16), dict(fraction_read=1.0, slot_entropy=1.0, key_entropy=1.0)),  # uniform
    (np.eye(16)[5] * 7, dict(fraction_read=1 / 16, slot_entropy=0.0, key_entropy=0.0)),
    # Only sub-key i = 1 of the first half, all four of the second: log 4 / log 16 = 1/2.
    (np.r_[np.zeros(4), np.ones(4), np.zeros(8)],
     dict(fraction_read=0.25, slot_entropy=0.5, key_entropy=0.5)),
])
def test_usage_stats_of_known_read_patterns(counts, expected):
  stats = usage_stats(jnp.asarray(counts, jnp.int32), n_keys=4)
  for name, value in expected.items():
    np.testing.assert_allclose(stats[name], value, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name,tagged", [("pkm", {"values"}), ("peer", {"down", "up"})])
def test_value_tables_are_tagged_for_their_own_optimizer_group(name, tagged):
  layer = _layer(name, jnp.float32)
  groups = optimizer_groups(nnx.state(layer, nnx.Param))
  flat = {path[0] if len(path) == 1 else path: g for path, g in nnx.to_flat_state(groups)}
  assert {p for p, g in flat.items() if g == MEMORY_VALUES} == tagged
  assert all(g == DEFAULT_GROUP for p, g in flat.items() if p not in tagged)
  # As optax labels: only the tagged tables move when the default group's learning rate is 0.
  tx = optax.multi_transform({MEMORY_VALUES: optax.sgd(1.0), DEFAULT_GROUP: optax.sgd(0.0)},
                             groups)
  optimizer = nnx.Optimizer(layer, tx, wrt=nnx.Param)
  before = nnx.to_flat_state(nnx.clone(nnx.state(layer, nnx.Param)))

  @nnx.jit
  def train_step(layer, optimizer):
    optimizer.update(layer, nnx.grad(lambda m: jnp.sum(m(jnp.ones((4, D))) ** 2))(layer))

  train_step(layer, optimizer)
  for (path, old), (_, new) in zip(before, nnx.to_flat_state(nnx.state(layer, nnx.Param))):
    assert np.any(old[...] != new[...]) == (path[0] in tagged), path


def test_optimizer_groups_reject_raw_arrays():
  with pytest.raises(TypeError, match="nnx.state"):
    optimizer_groups({"w": jnp.ones(3)})
