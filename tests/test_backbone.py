"""The LM backbone: shapes, causality, cached decoding == full forward, overfitting one batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from helpers import tiny_config

from memzoo.models.backbone import LanguageModel, layer_mixers
from memzoo.train.sample import generate


def tiny_model(seed=0, **model):
  config = tiny_config(**model)
  config.model.vocab_size = 17
  return LanguageModel(config.model, rngs=nnx.Rngs(seed))


def test_layer_mixers_repeat_the_pattern():
  assert layer_mixers({"mixers": ("a", "b"), "num_layers": 5}) == ["a", "b", "a", "b", "a"]
  assert layer_mixers({"mixers": "a", "num_layers": 2}) == ["a", "a"]


forward = nnx.jit(lambda model, tokens: model(tokens))


def test_logits_shape_and_causality():
  model = tiny_model()
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 17)
  logits = forward(model, tokens)
  assert logits.shape == (2, 12, 17) and logits.dtype == jnp.float32
  changed = forward(model, tokens.at[:, 7].set((tokens[:, 7] + 1) % 17))
  np.testing.assert_array_equal(logits[:, :7], changed[:, :7])
  assert not np.allclose(logits[:, 7:], changed[:, 7:])


def test_untied_head_and_gqa_build():
  model = tiny_model(tie_embeddings=False, num_kv_heads=1)
  assert forward(model, jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, 17)


def test_prefill_then_step_equals_forward():
  model = tiny_model()
  tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, 17)
  full = forward(model, tokens)
  state = model.init_state(2, 16)
  logits, state = nnx.jit(lambda m, x, s: m.prefill(x, s))(model, tokens[:, :5], state)
  outs = [logits]
  step = nnx.jit(lambda m, x, s: m.step(x, s))
  for t in range(5, 11):
    step_logits, state = step(model, tokens[:, t], state)
    outs.append(step_logits[:, None])
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=2e-5, rtol=2e-5)


def test_greedy_sampling_with_cache_equals_recomputing_without_cache():
  model = tiny_model(seed=3)
  prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
  cached = generate(model, prompt, 8, temperature=0.0)
  seq = jnp.zeros((2, 11), jnp.int32).at[:, :3].set(prompt)
  for t in range(3, 11):  # no cache: run the whole (causal, padded) sequence for every new token
    seq = seq.at[:, t].set(jnp.argmax(forward(model, seq)[:, t - 1], axis=-1))
  np.testing.assert_array_equal(cached, seq[:, 3:])


def test_overfits_one_batch():
  model = tiny_model()
  tokens = jax.random.randint(jax.random.key(2), (4, 17), 0, 17)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for _ in range(150):
    params, opt_state, loss = step(params, opt_state)
  assert loss < 0.05, loss
