"""Memory knobs change how, not what: scan_layers, remat and gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from helpers import tiny_config

from memzoo.models.backbone import LanguageModel
from memzoo.train.step import make_train_step
from memzoo.train.state import TrainState


def build(**model):
  config = tiny_config(num_layers=4, **model)
  config.model.vocab_size = 17
  model = LanguageModel(config.model, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def to_scanned(loop_params, period):
  """Loop layout (`stack.blocks[i]`) -> scan layout (`stack.groups.blocks[j]`, stacked)."""
  blocks = loop_params["stack"]["blocks"]
  groups = len(blocks) // period
  stacked = {j: jax.tree.map(lambda *xs: jnp.stack(xs),
                             *[blocks[g * period + j] for g in range(groups)])
             for j in range(period)}
  return {**loop_params, "stack": {"groups": {"blocks": stacked}}}


def loss_and_grads(graphdef, params, tokens):
  def loss(params):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


TOKENS = jax.random.randint(jax.random.key(0), (4, 13), 0, 17)


def test_scan_layers_gives_the_same_loss_and_grads():
  graphdef, params = build(mixers=("attention", "attention"))
  scan_graphdef, scan_params = build(mixers=("attention", "attention"), scan_layers=True)
  converted = to_scanned(params, period=2)
  assert jax.tree.structure(converted) == jax.tree.structure(scan_params)
  loss, grads = loss_and_grads(graphdef, params, TOKENS)
  scan_loss, scan_grads = loss_and_grads(scan_graphdef, converted, TOKENS)
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               scan_grads, to_scanned(grads, period=2))


def test_remat_gives_the_same_gradients():
  for scan in (False, True):
    graphdef, params = build(scan_layers=scan)
    loss, grads = loss_and_grads(graphdef, params, TOKENS)
    for policy in ("full", "dots_saveable"):
      remat_graphdef, _ = build(scan_layers=scan, remat=policy)
      remat_loss, remat_grads = loss_and_grads(remat_graphdef, params, TOKENS)
      np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                   remat_grads, grads)


def test_grad_accumulation_equals_one_big_batch():
  graphdef, params = build()
  tx = optax.sgd(0.1)  # linear in the gradient: the updated params compare the gradients
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=tx.init(params), bad_steps=zero,
                     skipped_steps=zero)
  tokens = jax.random.randint(jax.random.key(1), (8, 13), 0, 17)
  targets = tokens[:, 1:].at[:3, :5].set(-100)  # uneven scored counts across micro-batches
  batch = {"inputs": tokens[:, :-1], "targets": targets}
  results = {}
  for accum in (1, 4):
    step = jax.jit(make_train_step(graphdef, tx, aux_loss_coef=0.0,
                                   lr_schedule=optax.constant_schedule(0.1),
                                   grad_accum_steps=accum))
    results[accum] = step(state, batch)
  (one, one_metrics), (four, four_metrics) = results[1], results[4]
  np.testing.assert_allclose(four_metrics["loss"], one_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(four_metrics["grad_norm"], one_metrics["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               four.params, one.params)
