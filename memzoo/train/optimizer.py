"""AdamW with linear warmup, cosine decay to `min_lr`, global-norm clipping, and decoupled weight
decay on matrices only (nanoGPT's grouping: no decay on norms, biases and other vectors).

Parameters tagged `optimizer_group="memory_values"` (product-key values, PEER experts, Engram
tables: rows that each step reads sparsely) get their own learning-rate multiplier and weight decay,
`config.train.memory_values_lr_mult` / `memory_values_weight_decay` (Berges et al. 2024 train the
memory values with a 10x learning rate).
"""

import jax
import optax
from flax import nnx

from memzoo.models.layers.common import DEFAULT_GROUP, MEMORY_VALUES, optimizer_groups


def lr_schedule(train_cfg, scale: float = 1.0) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr * scale, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1),
      end_value=train_cfg.min_lr * scale)


def _adamw(train_cfg, lr_scale: float, weight_decay: float) -> optax.GradientTransformation:
  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.adamw(lr_schedule(train_cfg, lr_scale), b1=train_cfg.b1, b2=train_cfg.b2,
                     weight_decay=weight_decay, mask=decay_mask)


def make_optimizer(train_cfg, abstract_params: nnx.State) -> optax.GradientTransformation:
  """The optimizer for the params dict (`nnx.to_pure_dict` of `abstract_params`)."""
  labels = nnx.to_pure_dict(optimizer_groups(abstract_params))
  default = _adamw(train_cfg, 1.0, train_cfg.weight_decay)
  if set(jax.tree.leaves(labels)) <= {DEFAULT_GROUP}:
    update = default
  else:
    update = optax.multi_transform(
        {DEFAULT_GROUP: default,
         MEMORY_VALUES: _adamw(train_cfg, train_cfg.memory_values_lr_mult,
                               train_cfg.memory_values_weight_decay)}, labels)
  return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), update)
