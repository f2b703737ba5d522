"""Small configs shared by the tests."""

from memzoo.train.config import base_config


def tiny_config(**model):
  """A 2-layer d=32 char model on 16-token windows of tiny Shakespeare; a few steps."""
  config = base_config()
  config.data.seq_len = 16
  config.model.update({**dict(d_model=32, num_layers=2, num_heads=2), **model})
  config.train.update(steps=6, batch_size=4, warmup_steps=2, log_every=2, eval_every=3,
                      eval_steps=2, checkpoint_every=3)
  return config


def train_steps(run, state, steps: int) -> tuple:
  """`steps` train steps of a `trainer.setup` run from `state` on its next batches, under its mesh
  and rules: `(state, [loss of each step])`."""
  losses = []
  with run.context():
    for _ in range(steps):
      state, metrics = run.train_step(state, run.to_global(next(run.data)))
      losses.append(float(metrics["loss"]))
  return state, losses


def sequence_mesh_check(mixer: str, options: dict, *, sharded_op: bool) -> str:
  """A script for `on_devices` (8 devices): `mixer` (d_model 32, 2 heads, `options`) gives the same
  loss and gradients (params and input) on a (data=2, sequence=4) mesh as on one device, on 24
  tokens in two documents. `sharded_op`: also assert that a sequence-parallel form ran (an
  all-gather in the jaxpr)."""
  return f"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from memzoo.models.layers import registry
from memzoo.train.config import base_config

cfg = base_config().model
cfg.update(d_model=32, num_heads=2, vocab_size=11)
cfg[{mixer!r}].update({options!r})
graphdef, params = nnx.split(registry.build("mixer", {mixer!r}, cfg, rngs=nnx.Rngs(0)))
x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 24, 32)), jnp.float32)
segment_ids = jnp.asarray(np.repeat([[0] * 9 + [1] * 15], 2, 0), jnp.int32)
cotangent = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

@jax.jit
def loss_and_grads(params, x):
  def loss(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x, segment_ids=segment_ids) * cotangent)
  return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

want = loss_and_grads(params, x)
mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
with jax.set_mesh(mesh):
  got = loss_and_grads(params, x)
  assert ("all_gather" in str(jax.make_jaxpr(loss_and_grads)(params, x))) == {sharded_op}
for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
  np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)
"""
