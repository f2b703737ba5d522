"""The training loop, read top to bottom.

  setup:  data -> mesh -> sharded model + optimizer -> jitted steps -> restore or init
  train:  loop (log one step late, eval, checkpoint) -> wait for the last save
"""

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from memzoo.data import pipeline, tasks
from memzoo.errors import ConfigError
from memzoo.train import config as config_lib
from memzoo.train import distributed, report_setup, sharding
from memzoo.train import state as state_lib
from memzoo.train.checkpoint import Checkpointer
from memzoo.train.mesh import make_mesh
from memzoo.train.metrics import MetricsLog, ProgressBar, Throughput
from memzoo.train.optimizer import lr_schedule, make_optimizer
from memzoo.train.step import make_eval_step, make_train_step


def resolve(config, task):
  """Fills fields the task decides (`model.vocab_size`) and checks they agree."""
  config = config.copy_and_resolve_references()
  if config.model.vocab_size is None:
    config.model.vocab_size = task.vocab_size
  elif config.model.vocab_size < task.vocab_size:
    raise ConfigError("config.model.vocab_size", f"{config.model.vocab_size} is smaller than the "
                      f"task's vocabulary ({task.vocab_size})", "raise it or leave it None")
  return config


@dataclasses.dataclass
class Run:
  """Everything a training run is made of, built from its config by `setup`."""
  config: Any
  workdir: Path
  task: Any
  mesh: Mesh
  rules: tuple  # logical axis name -> mesh axes
  state: state_lib.TrainState  # restored from the latest checkpoint, or freshly initialised
  data: Any  # the grain train iterator, positioned to match `state`
  checkpoints: Checkpointer
  train_step: Callable  # jitted (state, batch) -> (state, metrics); donates state
  eval_step: Callable  # jitted (params, batch) -> token stats
  eval_set: Any
  to_global: Callable  # process-local numpy batch -> global jax arrays

  def context(self):
    """The mesh and logical-axis rules layers see while the steps are traced."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nnx.logical_axis_rules(self.rules))
    return stack


def setup(config, workdir) -> Run:
  distributed.maybe_initialize(config.distributed)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # Data: the task decides the vocabulary; its tokenizer is saved for sampling.
  task = tasks.build_task(config_lib.data_options(config))
  config = resolve(config, task)
  if distributed.is_writer():
    (workdir / "config.json").write_text(config_lib.to_json(config))
    if task.tokenizer is not None:
      (workdir / "tokenizer.json").write_text(task.tokenizer.to_json())
  train_cfg = config.train

  # Mesh, and how batches are laid out on it.
  mesh = make_mesh(config.mesh)
  rules = tuple((name, axes) for name, axes in config.mesh.rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)

  def to_global(local_batch):
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  # Model and optimizer: shapes first, then shardings, then the jitted steps.
  graphdef, abstract_params = state_lib.abstract_model(config.model, config.seed)
  tx = make_optimizer(train_cfg, abstract_params)
  shardings = state_lib.state_shardings(abstract_params, tx, rules, mesh)
  train_step = jax.jit(
      make_train_step(graphdef, tx, aux_loss_coef=config.model.aux_loss_coef,
                      lr_schedule=lr_schedule(train_cfg),
                      grad_accum_steps=train_cfg.grad_accum_steps),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(graphdef), in_shardings=(shardings.params, batch_sharding))
  abstract_state = state_lib.abstract_state(config.model, config.seed, tx, shardings)

  # Restore the latest checkpoint (model, optimizer, step, data position), or start afresh.
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  data = pipeline.train_iterator(task, global_batch=train_cfg.batch_size, seed=config.seed,
                                 **process)
  checkpoints = Checkpointer(workdir / "checkpoints", train_cfg.keep_checkpoints)
  latest = checkpoints.latest_step()
  if latest is None:
    state = state_lib.create(config.model, config.seed, tx, shardings)
  else:
    state = checkpoints.restore(latest, abstract_state, data)

  eval_set = pipeline.eval_dataset(task, "val", global_batch=train_cfg.batch_size,
                                   num_batches=train_cfg.eval_steps, seed=config.seed + 1,
                                   **process)
  run = Run(config, workdir, task, mesh, rules, state, data, checkpoints, train_step, eval_step,
            eval_set, to_global)

  # Compile the train step ahead of time and report what it will cost per device.
  example = task.examples("train")[0]
  batch_shapes = {k: jax.ShapeDtypeStruct((train_cfg.batch_size, *np.shape(v)), np.int32,
                                          sharding=batch_sharding) for k, v in example.items()}
  with run.context():
    run.train_step = train_step.lower(abstract_state, batch_shapes).compile()
  if distributed.is_writer():
    print(report_setup.describe(mesh, abstract_state, run.train_step), flush=True)
  return run


def evaluate(run: Run, params) -> dict:
  """Mean loss and accuracy over the fixed eval set."""
  totals = None
  for batch in run.eval_set:
    stats = run.eval_step(params, run.to_global(batch))
    totals = stats if totals is None else jax.tree.map(lambda a, b: a + b, totals, stats)
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count}


def train(config, workdir) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the last eval."""
  run = setup(config, workdir)
  train_cfg = run.config.train
  is_writer = distributed.is_writer()
  state = run.state
  start = int(jax.device_get(state.step))

  log = MetricsLog(run.workdir, enabled=is_writer)
  bar = ProgressBar(train_cfg.steps, start, enabled=is_writer)
  tokens_per_step = train_cfg.batch_size * run.config.data.seq_len
  throughput, pending, last_eval = Throughput(), None, {}
  t_start = time.perf_counter()

  def flush(pending):
    step, metrics = pending
    metrics = jax.device_get(metrics)
    rate = throughput.rate(step, tokens_per_step)
    log.write(step, "train", **metrics, **rate)
    bar.update(step, f"loss {metrics['loss']:.4f}  {rate.get('tokens_per_s', 0):,.0f} tok/s")
    return metrics

  # Metrics of step s are fetched after step s+1 is dispatched: no host sync inside the loop.
  with run.context():
    for step in range(start + 1, train_cfg.steps + 1):
      state, metrics = run.train_step(state, run.to_global(next(run.data)))
      if pending is not None:
        flush(pending)
        pending = None
      last = step == train_cfg.steps
      if step % train_cfg.log_every == 0 or last:
        pending = (step, metrics)
      if step % train_cfg.eval_every == 0 or last:
        train_metrics = flush(pending) if pending else jax.device_get(metrics)
        pending = None
        last_eval = evaluate(run, state.params)
        log.write(step, "val", **last_eval)
        bar.print(f"step {step:>6}: train loss {train_metrics['loss']:.4f} | val loss "
                  f"{last_eval['loss']:.4f} | val acc {last_eval['accuracy']:.4f} | "
                  f"{time.perf_counter() - t_start:.1f} s")
      if step % train_cfg.checkpoint_every == 0 or last:
        run.checkpoints.save(step, state, run.data)
    if pending is not None:
      flush(pending)

  run.checkpoints.wait()
  run.checkpoints.close()
  bar.close()
  log.close()
  if start < train_cfg.steps and is_writer:
    print(f"trained steps {start + 1}-{train_cfg.steps} in {time.perf_counter() - t_start:.1f} s;"
          f" run directory {run.workdir}", flush=True)
  return last_eval
