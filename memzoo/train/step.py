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


def micro_batches(batch: dict, count: int) -> dict:
  """`[B, ...] -> [count, B / count, ...]`, micro-batch a holding rows a, a + count, ...: each
  data-parallel shard keeps its own rows, so the split moves no data between devices."""
  def split(x):
    x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    aux_loss_coef: float, lr_schedule, grad_accum_steps: int = 1):
  """`train_step(state, batch) -> (state, metrics)`; metrics are device scalars.

  The objective is the mean cross-entropy over the scored tokens of the whole batch plus
  `aux_loss_coef` times the layers' auxiliary loss. With `grad_accum_steps > 1` the batch is run as
  that many micro-batches under `lax.scan` and the gradient is the same sum, so it equals the
  one-batch gradient up to float rounding.
  """

  def micro_step(params, batch, total_count):
    def objective(params):
      logits, aux = forward(graphdef, params, batch)
      stats = token_stats(logits, batch["targets"])
      return (stats["loss_sum"] / total_count + aux_loss_coef * aux / grad_accum_steps,
              (stats, aux))
    (_, (stats, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, stats, aux

  def train_step(state: TrainState, batch: dict):
    total_count = jnp.maximum(jnp.sum(batch["targets"] != IGNORE), 1).astype(jnp.float32)
    if grad_accum_steps == 1:
      grads, stats, aux = micro_step(state.params, batch, total_count)
    else:
      micro = micro_batches(batch, grad_accum_steps)

      def accumulate(sums, one):
        return jax.tree.map(jnp.add, sums, micro_step(state.params, one, total_count)), None

      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(micro_step, state.params, first, total_count))
      (grads, stats, aux), _ = jax.lax.scan(accumulate, zeros, micro)
      aux = aux / grad_accum_steps  # reported as the mean over micro-batches
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": stats["loss_sum"] / total_count, "aux_loss": aux,
               "accuracy": stats["correct"] / total_count,
               "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef):
  """`eval_step(params, batch) -> token_stats sums` (summed over batches by the caller)."""

  def eval_step(params, batch):
    logits, _ = forward(graphdef, params, batch)
    return token_stats(logits, batch["targets"])

  return eval_step
