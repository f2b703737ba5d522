"""The linear-recurrent mixers: decoding across chunk boundaries and training inside the LM.

(`test_mixer_contract.py` checks causality, segment isolation, prefill + step and logical axes of
every registered mixer with its default options on one chunk.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.backbone import LanguageModel
from memzoo.models.layers import registry
from memzoo.models.layers.linear_attention import taylor2

LAYERS = ("retention", "linear_attention", "gla", "deltanet", "gated_deltanet")
D, HEADS = 32, 2
# Tiny shapes: compiling dominates, and LLVM's optimisations only cost time here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def build(name, **options):
  model_cfg = {"d_model": D, "num_heads": HEADS, name: options}
  return registry.build("mixer", name, model_cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name,options", [
    ("retention", {}), ("linear_attention", {"feature_map": "taylor2", "feature_dim": 4}),
    ("gla", {}), ("gated_deltanet", {})])
def test_prefill_then_step_across_chunks(name, options):
  """Chunks of 16 over 40 tokens: prefill 23 tokens (the state and conv tails cross a chunk
  boundary mid-chunk), then 17 recurrent steps == the chunk-form forward."""
  layer = build(name, chunk_size=16, **options)
  graphdef, params = nnx.split(layer)
  x = jax.random.normal(jax.random.key(1), (2, 40, D))
  full = jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
  y, state = jit(lambda p, x, s: nnx.merge(graphdef, p).prefill(x, s))(
      params, x[:, :23], layer.init_state(2, 40))
  step = jit(lambda p, x, s: nnx.merge(graphdef, p).step(x, s))
  outs = [y]
  for t in range(23, 40):
    y_t, state = step(params, x[:, t], state)
    outs.append(y_t[:, None])
  assert state["recurrent"].dtype == jnp.float32 and int(state["pos"]) == 40
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", LAYERS)
def test_trains_inside_language_model(name):
  """A 1-layer LM with this mixer fits a fixed batch: loss falls, and the mixer gets gradients."""
  model = LanguageModel({"vocab_size": 17, "d_model": D, "num_layers": 1, "num_heads": HEADS,
                         "mixers": (name,), name: {"chunk_size": 8}}, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (4, 25), 0, 17)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(1e-2)

  @jit
  def train_step(params, opt_state):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    mixer_grads = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
                   if "mixer" in jax.tree_util.keystr(path)]
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(mixer_grads)

  opt_state = tx.init(params)
  losses = []
  for _ in range(30):
    params, opt_state, loss, mixer_grad_norm = train_step(params, opt_state)
    losses.append(float(loss))
    assert np.isfinite(loss) and 0 < mixer_grad_norm < np.inf
  assert losses[-1] < 0.6 * losses[0], losses


def test_taylor2_feature_map_approximates_exp():
  """phi(q) . phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(d) (Based, eq. 3)."""
  q, k = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 0.3
  s = jnp.sum(q * k, -1) / 4.0
  np.testing.assert_allclose(jnp.sum(taylor2(q) * taylor2(k), -1), 1 + s + s * s / 2, rtol=1e-5)


def test_unknown_feature_map_is_a_config_error():
  with pytest.raises(ConfigError, match="feature_map"):
    build("linear_attention", feature_map="relu")


def test_default_chunk_size_is_a_per_backend_speed_setting():
  """Without `chunk_size` a layer takes `default_chunk_size()` (32 or 64 on CPU, 64 elsewhere);
  an explicit one wins, and the two compute the same function."""
  cpu = jax.default_backend() == "cpu"
  expected = {"retention": 32 if cpu else 64, "linear_attention": 64, "gla": 32 if cpu else 64,
              "deltanet": 32 if cpu else 64, "gated_deltanet": 32 if cpu else 64}
  x = jax.random.normal(jax.random.key(0), (1, 80, 32))
  for name, size in expected.items():
    layer = registry.build("mixer", name, {"d_model": 32, "num_heads": 2}, rngs=nnx.Rngs(0))
    assert layer.chunk_size == size, name
    other = registry.build("mixer", name, {"d_model": 32, "num_heads": 2, name: {"chunk_size": 48}},
                           rngs=nnx.Rngs(0))
    assert other.chunk_size == 48
    np.testing.assert_allclose(layer(x), other(x), rtol=2e-4, atol=2e-5)
