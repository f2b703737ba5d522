"""The training loop, read top to bottom.

  setup:  validate -> data -> mesh -> sharded model + optimizer -> jitted steps -> restore or init
  train:  loop (log one step late, eval, checkpoint; stop on a signal or on too many non-finite
          steps, with a checkpoint) -> wait for the last save

The host runs at most one step ahead of the devices (it waits for step s once s+1 is
dispatched; evaluation likewise per batch). That keeps an accelerator's queue fed and bounds what
is in flight: with several CPU devices in one process, jax 0.10.2's XLA:CPU client deadlocks once
more than 32 programs are queued on a device while a collective one is pending (the queue's
semaphore blocks one of its few dispatch threads, and the collective's other half never gets one:
"only 1 of 2 threads arrived", fatal after 40 s); an eval of 20 batches used to queue ~80.

Resuming is exact: the checkpoint holds the model, the optimizer, the step counters and the data
iterator's position, and nothing else is random, so a run killed at any moment and re-run from its
latest checkpoint produces the same losses and parameters, bit for bit, as one never interrupted.
"""

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from memzoo.data import pipeline, tasks
from memzoo.errors import ConfigError, TrainingDiverged, UserError
from memzoo.models.ops.memory_usage import table_usage
from memzoo.models.backbone import has_memory_tables
from memzoo.train import config as config_lib
from memzoo.train import distributed, mfu, report_setup, rundir, sharding, validate
from memzoo.train import state as state_lib
from memzoo.train.checkpoint import Checkpointer, DifferentModel
from memzoo.train.mesh import make_mesh
from memzoo.train.metrics import MetricsLog, ProgressBar, Throughput
from memzoo.train.optimizer import lr_schedule, make_optimizer
from memzoo.train.preemption import StopRequests
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
  start: int  # the step of `state` (0 when fresh)
  data: Any  # the grain train iterator, positioned to match `state`
  checkpoints: Checkpointer
  train_step: Callable  # compiled (state, batch) -> (state, metrics); donates state
  eval_step: Callable  # jitted (params, batch) -> token stats
  eval_set: Any
  to_global: Callable  # process-local numpy batch -> global jax arrays
  flops_per_step: int  # model FLOPs of a train step, forward + backward (for MFU)
  peak_flops_per_s: float  # of the whole job, in the compute dtype (memzoo/train/mfu.py)

  def context(self):
    return mesh_context(self.mesh, self.rules)


def mesh_context(mesh, rules) -> contextlib.ExitStack:
  """The mesh and logical-axis rules that layers see while the steps are traced."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nnx.logical_axis_rules(rules))
  return stack


def setup(config, workdir, overwrite: bool = False) -> Run:
  """Builds the run; resumes the latest readable checkpoint in `workdir` unless `overwrite`, which
  first moves an existing run directory aside."""
  distributed.maybe_initialize(config.distributed)
  workdir = Path(workdir)
  validate.check_config(config)
  validate.check_layout(config, jax.device_count(), jax.process_count())
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir: {workdir} is a file, not a directory; pass a directory")

  # Data: the task decides the vocabulary; its tokenizer is saved for sampling.
  task = tasks.build_task(config_lib.data_options(config))
  config = resolve(config, task)
  validate.check_task(config, task)
  train_cfg = config.train

  # Mesh, and how batches are laid out on it.
  mesh = make_mesh(config.mesh)
  rules = tuple((name, axes) for name, axes in config.mesh.rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)

  def to_global(local_batch):
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  # Model and optimizer: shapes first, then shardings, then the jitted steps.
  with validate.layer_errors(config):  # a layer's own checks of its options
    graphdef, abstract_params = state_lib.abstract_model(config.model, config.seed)
  tx = make_optimizer(train_cfg, abstract_params)
  shardings = state_lib.state_shardings(abstract_params, tx, rules, mesh)
  train_step = jax.jit(
      make_train_step(graphdef, tx, aux_loss_coef=config.model.aux_loss_coef,
                      lr_schedule=lr_schedule(train_cfg),
                      grad_accum_steps=train_cfg.grad_accum_steps,
                      debug_nan_steps=tuple(train_cfg.debug_nan_steps)),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(graphdef, collect_reads=has_memory_tables(config.model)),
                      in_shardings=(shardings.params, batch_sharding))
  target = state_lib.abstract_state(config.model, config.seed, tx, shardings)
  batch = abstract_batch(task, train_cfg, batch_sharding)
  # Trace (which catches layer errors as config errors), then compile ahead of time and report
  # what the step costs per device.
  with mesh_context(mesh, rules):
    traced = validate.check_model(config, train_step, (target, batch))
    compiled_step = traced.lower().compile()
    # Under the mesh: a layer counts the form it runs there (MoM: masked when sequence-parallel).
    flops_per_step = nnx.merge(graphdef, abstract_params).train_flops(*batch["inputs"].shape)
  peak, peak_source = mfu.job_peak(config.model.dtype)
  if distributed.is_writer():
    print(report_setup.describe(mesh, target, compiled_step), flush=True)
    print(report_setup.describe_flops(flops_per_step, peak, peak_source, config.model.dtype),
          flush=True)

  # Restore the latest checkpoint (model, optimizer, step, data position), or start afresh.
  rundir.prepare(workdir, overwrite)
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  data = pipeline.train_iterator(task, global_batch=train_cfg.batch_size, seed=config.seed,
                                 **process)
  checkpoints = Checkpointer(workdir / "checkpoints", train_cfg.keep_checkpoints)
  try:
    start, state = checkpoints.restore_latest(target, data)
  except DifferentModel as e:
    raise rundir.different_run_error(workdir, config, str(e)) from None
  if state is None:
    start, state = 0, state_lib.create(config.model, config.seed, tx, shardings)
  record_run(workdir, config, task, start)

  eval_set = pipeline.eval_dataset(task, "val", global_batch=train_cfg.batch_size,
                                   num_batches=train_cfg.eval_steps, seed=config.seed + 1,
                                   **process)
  return Run(config, workdir, task, mesh, rules, state, start, data, checkpoints, compiled_step,
             eval_step, eval_set, to_global, flops_per_step, peak)


def abstract_batch(task, train_cfg, batch_sharding) -> dict:
  """Shapes, dtypes and sharding of a global batch of the task's training examples."""
  return {k: jax.ShapeDtypeStruct((train_cfg.batch_size, *np.shape(v)), np.asarray(v).dtype,
                                  sharding=batch_sharding)
          for k, v in task.examples("train")[0].items()}


def record_run(workdir: Path, config, task, start: int) -> None:
  """Writes config.json and tokenizer.json (atomically); warns about fields changed on resume."""
  if not distributed.is_writer():
    return
  changes = rundir.config_changes(workdir, config)
  if start and changes:
    print(f"memzoo: warning: resuming step {start} with a changed config: {'; '.join(changes)}",
          file=sys.stderr)
  rundir.write_atomic(workdir / "config.json", config_lib.to_json(config))
  if task.tokenizer is not None:
    rundir.write_atomic(workdir / "tokenizer.json", task.tokenizer.to_json())


def evaluate(run: Run, params) -> dict:
  """Mean loss and accuracy over the fixed eval set, and how its batches used each memory table."""
  return mean_token_stats(run.eval_step, params, run.eval_set, run.to_global)


def mean_token_stats(eval_step, params, batches, to_global=lambda batch: batch) -> dict:
  """Mean loss and accuracy of `eval_step` (see step.make_eval_step) summed over `batches`, and
  per memory table `memory/<path>/<stat>` of `memory_usage.usage_stats` over all of them."""
  totals, previous = None, None
  for batch in batches:
    stats = eval_step(params, to_global(batch))
    if previous is not None:  # fetched once the next batch is dispatched (module docstring)
      totals = _add(totals, jax.device_get(previous))
    previous = stats
  totals = _add(totals, jax.device_get(previous))
  count = max(float(totals["count"]), 1.0)
  result = {"loss": float(totals["loss_sum"]) / count,
            "accuracy": float(totals["correct"]) / count}
  for table, counts in totals["slot_reads"].items():
    for stat, value in table_usage(counts).items():
      result[f"memory/{table}/{stat}"] = float(value)
  return result


def _add(totals, stats):
  return stats if totals is None else jax.tree.map(np.add, totals, stats)


def train(config, workdir, overwrite: bool = False) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the last eval.

  SIGTERM / SIGINT: the current step finishes, a checkpoint is saved and train returns.
  `config.train.max_bad_steps` consecutive non-finite steps: a checkpoint is saved, then
  `TrainingDiverged` is raised (the check runs when metrics are fetched, every `log_every` steps).
  """
  distributed.maybe_initialize(config.distributed)  # before anything touches a device
  with StopRequests() as stop:
    run = setup(config, workdir, overwrite)
    train_cfg = run.config.train
    is_writer = distributed.is_writer()
    state, start = run.state, run.start

    log = MetricsLog(run.workdir, enabled=is_writer, start=start)
    bar = ProgressBar(train_cfg.steps, start, enabled=is_writer)
    throughput = Throughput(train_cfg.batch_size * run.config.data.seq_len, run.flops_per_step,
                            run.peak_flops_per_s)
    pending, previous, last_eval, diverged = None, None, {}, None
    t_start = time.perf_counter()

    def flush(pending):
      nonlocal diverged
      step, metrics = pending
      metrics = jax.device_get(metrics)
      rate = throughput.rate(step)
      log.write(step, "train", **metrics, **rate)
      bar.update(step, f"loss {metrics['loss']:.4f}  {Throughput.summary(rate)}")
      if metrics["bad_steps"] >= train_cfg.max_bad_steps:
        diverged = (step, int(metrics["bad_steps"]))
      return metrics

    # Step s is waited for (and its metrics fetched, on log steps) once step s+1 is dispatched.
    step = start
    with run.context():
      while step < train_cfg.steps and not (diverged or stop.stop_requested(step)):
        step += 1
        state, metrics = run.train_step(state, run.to_global(next(run.data)))
        if previous is not None:
          jax.block_until_ready(previous)  # one step in flight at most (module docstring)
        previous = metrics
        if pending is not None:
          flush(pending)
          pending = None
        last = step == train_cfg.steps
        if step % train_cfg.log_every == 0 or last:
          pending = (step, metrics)
        if (step % train_cfg.eval_every == 0 or last) and not diverged:
          train_metrics = flush(pending) if pending else jax.device_get(metrics)
          pending = None
          last_eval = evaluate(run, state.params)
          log.write(step, "val", **last_eval, elapsed_s=time.perf_counter() - t_start)
          bar.print(f"step {step:>6}: train loss {train_metrics['loss']:.4f} | val loss "
                    f"{last_eval['loss']:.4f} | val acc {last_eval['accuracy']:.4f} | "
                    f"{time.perf_counter() - t_start:.1f} s")
        if step % train_cfg.checkpoint_every == 0 or last:
          run.checkpoints.save(step, state, run.data)
      if pending is not None:
        flush(pending)
      if step > start and (diverged or stop.received):
        run.checkpoints.save(step, state, run.data)  # a no-op if this step is saved already

    run.checkpoints.wait()
    run.checkpoints.close()
    bar.close()
    log.close()
  if diverged:
    at, count = diverged
    raise TrainingDiverged(
        f"training diverged: {count} consecutive steps up to step {at} had a non-finite loss or "
        f"gradient (config.train.max_bad_steps={train_cfg.max_bad_steps}); their updates were "
        f"skipped and checkpoint {step} was saved; lower config.train.lr (or raise max_bad_steps)"
        " and re-run to resume")
  if stop.received and step < train_cfg.steps:
    saved = f"checkpoint {step}" if step else "no checkpoint yet"
    print(f"memzoo: {stop.received}: stopped after step {step} with {saved}; run the same command"
          " to resume", flush=True)
  elif start < train_cfg.steps and is_writer:
    print(f"trained steps {start + 1}-{train_cfg.steps} in {time.perf_counter() - t_start:.1f} s;"
          f" run directory {run.workdir}", flush=True)
  return last_eval
