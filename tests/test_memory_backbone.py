"""LanguageModel with memory_layers / engram_layers: trains, decodes like it trains, shares one
value table correctly, and rejects bad configs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.backbone import LanguageModel
from memzoo.models.layers.common import DEFAULT_GROUP, MEMORY_VALUES, optimizer_groups
from memzoo.models.ops.memory_usage import find_reads, memory_usage

pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow:DeprecationWarning")

BASE = dict(vocab_size=48, d_model=32, num_layers=2, mixers=("attention",), num_heads=2,
            pkm=dict(n_keys=6, heads=2, topk=3, k_dim=16), peer=dict(n_keys=6, heads=2, topk=3),
            engram=dict(ngram_heads=2, ngram_dim=16))


# Shared pkm table in both layers, Engram in the first: exercises every memory feature at once.
MEMORY = dict(memory_layers=(0, 1), memory_share_values=True, engram_layers=(0,))


def _model(**overrides):
  """A fresh copy of the model for this config (building eagerly is the slow part)."""
  return nnx.clone(_build(tuple(sorted(overrides.items()))))


@functools.cache
def _build(overrides):
  return LanguageModel({**BASE, **dict(overrides)}, rngs=nnx.Rngs(0))


def _tokens(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, BASE["vocab_size"])


@pytest.mark.parametrize("overrides", [
    MEMORY, dict(num_layers=1, memory_layers=(0,), memory_ffn="peer")], ids=["pkm_engram", "peer"])
def test_language_model_with_memory_layers_trains(overrides):
  model = _model(**overrides)
  tokens = _tokens((4, 17))
  groups = optimizer_groups(nnx.state(model, nnx.Param))
  tx = optax.multi_transform({DEFAULT_GROUP: optax.adam(1e-2), MEMORY_VALUES: optax.adam(3e-2)},
                             groups)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(model):
      logits, intermediates = nnx.capture(model, nnx.Intermediate)(tokens[:, :-1])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
      return loss, {name: memory_usage(r) for name, r in find_reads(intermediates).items()}
    (loss, usage), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, usage

  losses = []
  for _ in range(8):
    loss, usage = train_step(model, optimizer)
    losses.append(float(loss))
  assert losses[-1] < 0.8 * losses[0], losses
  expected_reads = len(overrides["memory_layers"]) + len(overrides.get("engram_layers", ()))
  assert len(usage) == expected_reads
  assert all(0 < float(u["fraction_read"]) <= 1 for u in usage.values())


def test_prefill_then_steps_equal_forward_with_memory_and_engram():
  model = _model(**MEMORY)
  graphdef, params = nnx.split(model)
  tokens = _tokens((2, 7), seed=1)
  full = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)
  prefill = jax.jit(lambda p, t, s: nnx.merge(graphdef, p).prefill(t, s))
  step = jax.jit(lambda p, t, s: nnx.merge(graphdef, p).step(t, s))
  logits, state = prefill(params, tokens[:, :4], model.init_state(2, 7))
  steps = [logits]
  for i in range(4, 7):
    logits, state = step(params, tokens[:, i], state)
    steps.append(logits[:, None])
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_shared_table_is_owned_by_the_model_and_read_by_every_memory_layer():
  shared = _model(memory_layers=(0, 1), memory_share_values=True)
  copies = _model(memory_layers=(0, 1))
  assert all(shared.stack.blocks[i].ffn.values is None for i in (0, 1))
  params = nnx.to_pure_dict(nnx.state(shared, nnx.Param))
  table = params.pop("memory_values")
  for i in (0, 1):
    params["stack"]["blocks"][i]["ffn"]["values"] = table
  copied = nnx.state(copies, nnx.Param)
  nnx.replace_by_pure_dict(copied, params)
  nnx.update(copies, copied)
  # Equal logits: both layers of the shared model read the model's table (each copy reads its own
  # copy of it). Its gradient then sums both layers' (one parameter used twice).
  tokens = _tokens((2, 9), seed=2)

  def logits(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s: nnx.merge(graphdef, s)(tokens))(state)

  np.testing.assert_allclose(logits(shared), logits(copies), rtol=1e-5, atol=1e-6)
  assert optimizer_groups(nnx.state(shared, nnx.Param))["memory_values"] == MEMORY_VALUES


@pytest.mark.parametrize("overrides,field", [
    (dict(memory_layers=(2,)), "config.model.memory_layers"),
    (dict(engram_layers=(-1,)), "config.model.engram_layers"),
    (dict(memory_share_values=True), "config.model.memory_share_values"),
    (dict(memory_layers=(1,), memory_ffn="peer", memory_share_values=True),
     "config.model.memory_share_values"),
    (dict(engram_layers=(0,), engram=dict(n_gram=3)), "config.model.engram.n_gram"),
])
def test_bad_memory_configs_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    LanguageModel({**BASE, **overrides}, rngs=nnx.Rngs(0))
