"""AdamW with linear warmup, cosine decay to `min_lr`, global-norm clipping, and decoupled weight
decay on matrices only (nanoGPT's grouping: no decay on norms, biases and other vectors)."""

import jax
import optax


def lr_schedule(train_cfg) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1), end_value=train_cfg.min_lr)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip),
      optax.adamw(lr_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                  weight_decay=train_cfg.weight_decay, mask=decay_mask))
