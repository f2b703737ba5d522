"""The train state (a pure pytree: step, parameters as a nested dict, optimizer state) and how to
create it already sharded, without materialising anything on one device first."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memzoo.models.backbone import LanguageModel
from memzoo.train import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: train steps taken (batches consumed), skipped ones included
  params: dict  # nnx.to_pure_dict of the model's Params
  opt_state: Any
  bad_steps: jax.Array  # int32 scalar: consecutive latest steps skipped for a non-finite loss/grad
  skipped_steps: jax.Array  # int32 scalar: all steps skipped so far


def build_model(model_cfg, seed: int) -> LanguageModel:
  return LanguageModel(model_cfg, rngs=nnx.Rngs(seed))


def abstract_model(model_cfg, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
  """Graph definition and abstract (shape-only) Param state of the model, nothing allocated."""
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, seed)),
                                     nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise TypeError(f"the model holds non-Param variables {list(nnx.to_flat_state(rest))}; "
                    "layers must keep everything trainable in nnx.Param and compute buffers on "
                    "the fly")
  return graphdef, params


def state_shardings(abstract_params: nnx.State, tx: optax.GradientTransformation, rules,
                    mesh) -> TrainState:
  """Shardings of every TrainState leaf: params by their logical axes, optimizer moments like
  their params, scalars replicated."""
  param_sharding = nnx.to_pure_dict(sharding.param_shardings(abstract_params, rules, mesh))
  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                        nnx.to_pure_dict(abstract_params))
  abstract_opt = jax.eval_shape(tx.init, shapes)
  replicated = sharding.replicated(mesh)
  # Masked leaves (weight-decay masks, multi_transform groups) hold no array: kept as they are.
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_sharding = optax.tree_map_params(tx, lambda p, s: p if masked(p) else s, abstract_opt,
                                       param_sharding, transform_non_params=lambda _: replicated,
                                       is_leaf=masked)
  return TrainState(step=replicated, params=param_sharding, opt_state=opt_sharding,
                    bad_steps=replicated, skipped_steps=replicated)


def _initializer(model_cfg, seed: int, tx: optax.GradientTransformation):
  def init() -> TrainState:
    params = nnx.to_pure_dict(nnx.state(build_model(model_cfg, seed), nnx.Param))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), bad_steps=zero,
                      skipped_steps=zero)
  return init


def create(model_cfg, seed: int, tx: optax.GradientTransformation, shardings: TrainState):
  """Initialises the model and optimizer directly into their shardings (one jit, no host copy)."""
  return jax.jit(_initializer(model_cfg, seed, tx), out_shardings=shardings)()


def abstract_state(model_cfg, seed: int, tx: optax.GradientTransformation,
                   shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying their shardings: the restore target for a checkpoint."""
  shapes = jax.eval_shape(_initializer(model_cfg, seed, tx))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
