"""The jitted train and eval steps: pure functions of (TrainState, batch)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memzoo.data.tasks import IGNORE
from memzoo.train.state import TrainState


def token_stats(logits: jnp.ndarray, targets: jnp.ndarray) -> dict:
  """Sums over scored tokens (targets != IGNORE): cross-entropy, correct argmax, count."""
  scored = targets != IGNORE
  safe = jnp.where(scored, targets, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  correct = jnp.argmax(logits, axis=-1) == safe
  return {"loss_sum": jnp.sum(jnp.where(scored, ce, 0.0)),
          "correct": jnp.sum(scored & correct).astype(jnp.float32),
          "count": jnp.sum(scored).astype(jnp.float32)}


def aux_loss(model: nnx.Module) -> jnp.ndarray:
  """Sum of the auxiliary losses the layers sowed (`sow(nnx.Intermediate, "aux_loss", v)`)."""
  sown = nnx.pop(model, nnx.Intermediate)
  values = [jnp.sum(jnp.asarray(v)) for path, var in nnx.to_flat_state(sown)
            if "aux_loss" in path for v in jax.tree.leaves(var)]
  return sum(values, jnp.zeros((), jnp.float32))


def forward(graphdef: nnx.GraphDef, params: dict, batch: dict):
  """Logits and the sown auxiliary loss of the model with these params."""
  model = nnx.merge(graphdef, params)
  logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"))
  return logits, aux_loss(model)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    aux_loss_coef: float, lr_schedule, debug_nan_steps: tuple[int, ...] = ()):
  """`train_step(state, batch) -> (state, metrics)`; metrics are device scalars.

  A step whose objective or gradient is not finite is skipped inside the jit (no host sync):
  params and optimizer state stay as they were, `step` still advances (it counts batches consumed,
  keeping the data position and checkpoints aligned), `bad_steps` counts consecutive skipped steps
  and `skipped_steps` all of them. The optimizer's own count (Adam's bias correction, the schedule
  it applies) counts applied updates only; the logged `lr` is the schedule at `step`.
  `debug_nan_steps` is a testing hook: the objective of these (1-based) steps is multiplied by NaN.
  """

  def loss_fn(params, batch, step):
    logits, aux = forward(graphdef, params, batch)
    stats = token_stats(logits, batch["targets"])
    loss = stats["loss_sum"] / jnp.maximum(stats["count"], 1.0)
    if debug_nan_steps:
      loss = loss * jnp.where(jnp.isin(step, jnp.asarray(debug_nan_steps)), jnp.nan, 1.0)
    return loss + aux_loss_coef * aux, (loss, aux, stats)

  def train_step(state: TrainState, batch: dict):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (objective, (loss, aux, stats)), grads = grad_fn(state.params, batch, state.step + 1)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    bad_steps = jnp.where(finite, 0, state.bad_steps + 1)
    new_state = TrainState(
        step=state.step + 1, params=_where(finite, params, state.params),
        opt_state=_where(finite, opt_state, state.opt_state), bad_steps=bad_steps,
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, "aux_loss": aux,
               "accuracy": stats["correct"] / jnp.maximum(stats["count"], 1.0),
               "grad_norm": grad_norm, "lr": lr_schedule(state.step),
               "bad_steps": bad_steps, "skipped_steps": new_state.skipped_steps}
    return new_state, metrics

  return train_step


def _where(keep_new, new, old):
  """`new` where `keep_new` (a scalar bool), else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def make_eval_step(graphdef: nnx.GraphDef):
  """`eval_step(params, batch) -> token_stats sums` (summed over batches by the caller)."""

  def eval_step(params, batch):
    logits, _ = forward(graphdef, params, batch)
    return token_stats(logits, batch["targets"])

  return eval_step
