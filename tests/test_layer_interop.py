"""A mixer works as a plain building block: inside a user's own NNX model (trained with optax) and
inside a Linen model through `flax.nnx.bridge.ToLinen`, for one mixer of each family (FAMILIES)."""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx import bridge

import memzoo.models.layers  # noqa: F401  (registers every built-in layer)
from memzoo.models.layers import registry

D_MODEL, NUM_HEADS, VOCAB = 32, 2, 11


# One mixer per family and state structure (a KV cache, a matrix state with conv tails, a deep
# memory, routed memories); tests/test_mixer_contract.py checks every mixer's own math. (The
# Titans hybrids combine the first and third; they cost ~40 s here and add no new structure.)
FAMILIES = ("attention", "gated_deltanet", "lmm", "mom")


def simple_mixers() -> list[str]:
  """The FAMILIES mixers registered here and constructible from `d_model`, `num_heads` and `rngs`
  alone."""
  names = []
  for name in [n for n in FAMILIES if n in registry.REGISTRIES["mixer"]]:
    params = inspect.signature(registry.lookup("mixer", name).__init__).parameters.values()
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    if required <= {"self", "d_model", "num_heads", "rngs"}:
      names.append(name)
  return names


def build_mixer(name: str, rngs: nnx.Rngs):
  return registry.lookup("mixer", name)(d_model=D_MODEL, num_heads=NUM_HEADS, rngs=rngs)


class TinyLM(nnx.Module):
  """A user-written model: embedding, one residual mixer, a linear head."""

  def __init__(self, mixer: str, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, D_MODEL, rngs=rngs)
    self.mixer = build_mixer(mixer, rngs)
    self.head = nnx.Linear(D_MODEL, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    return self.head(x + self.mixer(x))


class LinenWrapper(nn.Module):
  """A Linen model that uses the NNX mixer as a submodule."""
  mixer: str

  @nn.compact
  def __call__(self, x):
    mixer = bridge.ToLinen(registry.lookup("mixer", self.mixer),
                           kwargs=dict(d_model=D_MODEL, num_heads=NUM_HEADS), name="mixer")
    return nn.Dense(D_MODEL, name="out")(x + mixer(x))


def _tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 16)), jnp.int32)


@pytest.mark.parametrize("mixer", simple_mixers())
def test_mixer_trains_inside_user_nnx_model(mixer):
  model = TinyLM(mixer, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  tokens = _tokens()

  @nnx.jit
  def train_step(model, optimizer, tokens):
    def loss_fn(model):
      logits = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, tokens)) for _ in range(8)]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("mixer", simple_mixers())
def test_mixer_inside_linen_model_via_bridge(mixer):
  x = jax.random.normal(jax.random.key(1), (2, 12, D_MODEL))
  linen_model = LinenWrapper(mixer)
  variables = jax.jit(linen_model.init)(jax.random.key(0), x)
  y = jax.jit(linen_model.apply)(variables, x)
  assert y.shape == x.shape

  grads = jax.jit(jax.grad(lambda v: jnp.sum(linen_model.apply(v, x) ** 2)))(variables)
  grad_leaves = jax.tree.leaves(nn.meta.unbox(grads["params"]["mixer"]))
  assert grad_leaves and all(bool(jnp.any(g != 0)) for g in grad_leaves)

  # The same parameters in the NNX module give the same mixer output.
  params = nn.meta.unbox(variables["params"])
  module = build_mixer(mixer, nnx.Rngs(123))
  graphdef, state = nnx.split(module)
  nnx.replace_by_pure_dict(state, params["mixer"])
  module = nnx.merge(graphdef, state)
  dense = params["out"]
  want = (x + nnx.jit(lambda m, x: m(x))(module, x)) @ dense["kernel"] + dense["bias"]
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
