"""Titans mixers (lmm, mag, mal, mac) in small configs that span several chunks, windows and
segments: prefill + step == forward, packed documents isolated, and a LanguageModel trains.
(The default configs also go through tests/test_mixer_contract.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import sequence_mesh_check

from memzoo.errors import ConfigError
from memzoo.models.backbone import LanguageModel
from memzoo.models.layers import registry
from memzoo.train.config import base_config

D, HEADS, T = 16, 2, 12
CONFIGS = {
    "lmm": dict(chunk_size=3, depth=2, grad_clip=1.0, omega_window=2, poly_degree=2),
    "mag": dict(window=4, num_persistent=3, block_q=5, memory=dict(chunk_size=2, depth=2)),
    "mal": dict(window=3, num_persistent=2, block_q=4, memory=dict(chunk_size=3, omega_window=3)),
    "mac": dict(segment_len=4, num_persistent=2, memory=dict(chunk_size=2, depth=2)),
}


def model_config(name, **fields):
  cfg = base_config().model
  cfg.update(d_model=D, num_heads=HEADS, vocab_size=13, **fields)
  cfg[name].update(CONFIGS[name])
  return cfg


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_step_and_document_isolation(name):
  layer = registry.build("mixer", name, model_config(name), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, T, D))
  forward = nnx.jit(lambda m, x, s: m(x, segment_ids=s))
  single = jnp.zeros((2, T), jnp.int32)
  full = forward(layer, x, single)

  state = layer.init_state(2, T)
  y, state = nnx.jit(lambda m, x, s: m.prefill(x, s))(layer, x[:, :5], state)
  outs = [y]
  step = nnx.jit(lambda m, x, s: m.step(x, s))
  for t in range(5, T):
    y_t, state = step(layer, x[:, t], state)
    outs.append(y_t[:, None])
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)

  # Packed documents (boundaries off the chunk / segment grid): changing one document's tokens
  # leaves every other document's outputs unchanged, and the first document matches no packing.
  segment_ids = jnp.array([[0] * 5 + [1] * 7, [2] * 3 + [3] * 6 + [4] * 3])
  packed = forward(layer, x, segment_ids)
  np.testing.assert_allclose(packed[0, :5], full[0, :5], atol=1e-5, rtol=1e-5)
  in_doc = segment_ids == jnp.array([[1], [3]])
  changed = forward(layer, x + 3.0 * in_doc[..., None], segment_ids)
  np.testing.assert_allclose(jnp.where(in_doc[..., None], 0.0, changed),
                             jnp.where(in_doc[..., None], 0.0, packed), atol=1e-5, rtol=1e-5)
  assert not np.allclose(changed[in_doc], packed[in_doc])


def test_hybrid_language_model_trains():
  """One LanguageModel layer per mixer (lean memories, to keep compilation short): a few Adam
  steps on one batch lower the loss, and every mixer's parameters get finite, non-zero gradients."""
  cfg = model_config("lmm", num_layers=4, mixers=("lmm", "mag", "mal", "mac"))
  lean = dict(depth=1, conv=False, omega_window=1)
  cfg.lmm.update(chunk_size=4, poly_degree=1, learned_init=False, **lean)
  for name in ("mag", "mal", "mac"):
    cfg[name].update(CONFIGS[name], num_persistent=2 if name == "mac" else 0)
    cfg[name].memory = dict(CONFIGS[name]["memory"], **lean)
  model = LanguageModel(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (2, 13), 0, 13)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(3e-2)

  @jax.jit
  def train_step(params, opt_state):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  opt_state = tx.init(params)
  losses = []
  for _ in range(8):
    params, opt_state, loss, grads = train_step(params, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
  for i, block in enumerate(grads["stack"]["blocks"].values()):
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(block["mixer"])]
    assert np.all(np.isfinite(norms)) and sum(norms) > 0, (cfg.mixers[i], norms)


@pytest.mark.parametrize("decay_bias", [-4.0, -8.0])
def test_decay_bias_sets_the_initial_forgetting(decay_bias):
  """At init (zero input) alpha_t = sigmoid(decay_bias) in every head; the other gates at 0.5."""
  cfg = model_config("lmm")
  cfg.lmm.update(omega_window=1, decay_bias=decay_bias)
  memory = registry.build("mixer", "lmm", cfg, rngs=nnx.Rngs(0))
  gates = memory.gates(jnp.zeros((1, 2, D)))
  np.testing.assert_allclose(gates["decay"], jax.nn.sigmoid(decay_bias), rtol=1e-6)
  np.testing.assert_allclose(gates["momentum"], 0.5)
  np.testing.assert_allclose(gates["lr"], 0.5 * memory.max_lr)


def test_bad_options_raise():
  cfg = model_config("mag")
  cfg.mag.memory = dict(chunk=2)
  with pytest.raises(ConfigError, match="memory.chunk"):
    registry.build("mixer", "mag", cfg, rngs=nnx.Rngs(0))
  cfg = model_config("mac")
  cfg.mac.update(segment_len=6, memory=dict(chunk_size=4))
  with pytest.raises(ValueError, match="segment_len"):
    registry.build("mixer", "mac", cfg, rngs=nnx.Rngs(0))
  cfg = model_config("lmm")
  cfg.lmm.residual_memory = True  # with poly_degree=2 the keys are wider than the values
  with pytest.raises(ValueError, match="residual_memory"):
    registry.build("mixer", "lmm", cfg, rngs=nnx.Rngs(0))


def test_memory_under_a_sequence_mesh_matches_one_device(on_devices):
  """The Titans memory has no sequence-parallel form (models README): under a sequence mesh it
  runs unchanged (XLA gathers the time axis) and gives one device's loss and gradients."""
  on_devices(sequence_mesh_check("lmm", dict(chunk_size=4), sharded_op=False))
