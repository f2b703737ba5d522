"""The jitted train and eval steps: pure functions of (TrainState, batch)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memzoo.data.tasks import IGNORE
from memzoo.models.ops.memory_usage import find_reads, table_counts
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


def forward(graphdef: nnx.GraphDef, params: dict, batch: dict):
  """Logits and the summed auxiliary loss of the layers (`Mixer.mix_with_aux`), with these
  params."""
  model = nnx.merge(graphdef, params)
  return model.logits_and_aux_loss(batch["inputs"], segment_ids=batch.get("segment_ids"))


def micro_batches(batch: dict, count: int) -> dict:
  """`[B, ...] -> [count, B / count, ...]`, micro-batch a holding rows a, a + count, ...: each
  data-parallel shard keeps its own rows, so the split moves no data between devices."""
  def split(x):
    x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    aux_loss_coef: float, lr_schedule, grad_accum_steps: int = 1,
                    debug_nan_steps: tuple[int, ...] = ()):
  """`train_step(state, batch) -> (state, metrics)`; metrics are device scalars.

  The objective is the mean cross-entropy over the scored tokens of the whole batch plus
  `aux_loss_coef` times the layers' auxiliary loss. With `grad_accum_steps > 1` the batch is run as
  that many micro-batches under `lax.scan` and the gradient is the same sum, so it equals the
  one-batch gradient up to float rounding.

  A step whose objective or gradient is not finite is skipped inside the jit (no host sync):
  params and optimizer state stay as they were, `step` still advances (it counts batches consumed,
  keeping the data position and checkpoints aligned), `bad_steps` counts consecutive skipped steps
  and `skipped_steps` all of them. The optimizer's own count (Adam's bias correction, the schedule
  it applies) counts applied updates only; the logged `lr` is the schedule at `step`.
  `debug_nan_steps` is a testing hook: the objective of these (1-based) steps is multiplied by NaN.
  """

  def micro_step(params, batch, total_count, poison):
    def objective(params):
      logits, aux = forward(graphdef, params, batch)
      stats = token_stats(logits, batch["targets"])
      value = stats["loss_sum"] / total_count + aux_loss_coef * aux / grad_accum_steps
      return value * poison, (stats, aux)
    (value, (stats, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, stats, aux, value

  def train_step(state: TrainState, batch: dict):
    total_count = jnp.maximum(jnp.sum(batch["targets"] != IGNORE), 1).astype(jnp.float32)
    poison = jnp.float32(1.0)
    if debug_nan_steps:
      poison = jnp.where(jnp.isin(state.step + 1, jnp.asarray(debug_nan_steps)), jnp.nan, 1.0)
    if grad_accum_steps == 1:
      grads, stats, aux, objective = micro_step(state.params, batch, total_count, poison)
    else:
      micro = micro_batches(batch, grad_accum_steps)

      def accumulate(sums, one):
        return jax.tree.map(jnp.add, sums,
                            micro_step(state.params, one, total_count, poison)), None

      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(micro_step, state.params, first, total_count, poison))
      (grads, stats, aux, objective), _ = jax.lax.scan(accumulate, zeros, micro)
      aux = aux / grad_accum_steps  # reported as the mean over micro-batches
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    bad_steps = jnp.where(finite, 0, state.bad_steps + 1)
    new_state = TrainState(
        step=state.step + 1, params=_where(finite, params, state.params),
        opt_state=_where(finite, opt_state, state.opt_state), bad_steps=bad_steps,
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = {"loss": stats["loss_sum"] / total_count * poison, "aux_loss": aux,
               "accuracy": stats["correct"] / total_count, "grad_norm": grad_norm,
               "lr": lr_schedule(state.step), "bad_steps": bad_steps,
               "skipped_steps": new_state.skipped_steps}
    return new_state, metrics

  return train_step


def _where(keep_new, new, old):
  """`new` where `keep_new` (a scalar bool), else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def make_eval_step(graphdef: nnx.GraphDef, *, collect_reads: bool = True):
  """`eval_step(params, batch) -> sums` to add up over batches: `token_stats`, and under
  "slot_reads" how often each row of each memory table was read (`{path: [num_slots] int32}`, from
  what the layers sow; see memzoo/models/ops/memory_usage.py). `collect_reads=False` skips the
  latter, for models without memory tables (`nnx.capture` fails under `nnx.scan`, and under
  `nnx.remat` of modules holding an `nnx.List`; memory layers are never scanned)."""

  def eval_step(params, batch):
    model = nnx.merge(graphdef, params)
    run = model.logits_and_aux_loss
    if collect_reads:
      run = nnx.capture(run, nnx.Intermediate)
    out = run(batch["inputs"], segment_ids=batch.get("segment_ids"))
    (logits, _), sown = out if collect_reads else (out, {})
    reads = {name: table_counts(r) for name, r in find_reads(sown).items()}
    return {**token_stats(logits, batch["targets"]), "slot_reads": reads}

  return eval_step
