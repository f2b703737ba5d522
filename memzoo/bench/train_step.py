"""Train-step MFU: the trainer's jitted step (AdamW, donated state) on random tokens, for a model
config and named variants of it (remat, scan_layers, attention form, compute dtype)."""

import statistics
import time

import jax
import numpy as np
from flax import nnx

from memzoo.train import config as config_lib
from memzoo.train import mfu, sharding
from memzoo.train import state as state_lib
from memzoo.train.mesh import make_mesh
from memzoo.train.optimizer import lr_schedule, make_optimizer
from memzoo.train.step import make_train_step

# The model: d_model 512, 8 attention layers (8 heads of 64), context 1024.
MODEL = dict(d_model=512, num_layers=8, num_heads=8, mixers=("attention",), vocab_size=256)
VARIANTS = {  # name -> config.model overrides applied on top of MODEL
    "default": {},
    "scan_layers": {"scan_layers": True},
    "remat=full": {"remat": "full"},
    "remat=dots_saveable": {"remat": "dots_saveable"},
    "attention=naive": {"attention.impl": "naive"},
    "attention=blockwise": {"attention.impl": "blockwise"},
    "bfloat16": {"dtype": "bfloat16"},
}


def model_config(overrides: dict, **model):
  """`base_config()` with MODEL, then `model`, then the variant's `overrides` ("a.b" keys reach
  into layer sub-configs)."""
  config = config_lib.base_config()
  config.model.update({**MODEL, **model})
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config.model
    for name in path:
      node = node[name]
    node[leaf] = value
  return config


def build_step(config, batch: int, seq_len: int):
  """`(compiled step, initial state, batch, model train FLOPs per step)` on all devices."""
  mesh = make_mesh(config.mesh)
  rules = tuple(config.mesh.rules)
  graphdef, abstract_params = state_lib.abstract_model(config.model, config.seed)
  tx = make_optimizer(config.train, abstract_params)
  shardings = state_lib.state_shardings(abstract_params, tx, rules, mesh)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  step = jax.jit(make_train_step(graphdef, tx, aux_loss_coef=config.model.aux_loss_coef,
                                 lr_schedule=lr_schedule(config.train)),
                 in_shardings=(shardings, batch_sharding), donate_argnums=0)
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (batch, seq_len + 1))
  data = {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}
  data = {k: jax.device_put(v, batch_sharding) for k, v in data.items()}
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    compiled = step.lower(state_lib.abstract_state(config.model, config.seed, tx, shardings),
                          data).compile()
    state = state_lib.create(config.model, config.seed, tx, shardings)
  flops = nnx.merge(graphdef, abstract_params).train_flops(batch, seq_len)
  return compiled, state, data, flops


def time_steps(compiled, state, data, *, steps: int, warmup: int = 2) -> tuple[float, float]:
  """Median wall and CPU seconds per step over `steps` steps after `warmup` steps."""
  walls, cpus = [], []
  for i in range(warmup + steps):
    wall, cpu = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    if i >= warmup:
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
  return statistics.median(walls), statistics.median(cpus)


def run(variants: list[str], *, batch: int, seq_len: int, steps: int, model: dict | None = None,
        log=print) -> list[dict]:
  """One row per variant: step times, model FLOPs, achieved FLOP/s, the peak and MFU."""
  rows = []
  for name in variants:
    config = model_config(VARIANTS[name], **(model or {}))
    compiled, state, data, flops = build_step(config, batch, seq_len)
    wall, cpu = time_steps(compiled, state, data, steps=steps)
    peak, source = mfu.job_peak(config.model.dtype)
    row = {"variant": name, "dtype": config.model.dtype, "batch": batch, "seq_len": seq_len,
           "step_s": wall, "step_cpu_s": cpu, "train_flops": flops, "flops_per_s": flops / wall,
           "peak_flops_per_s": peak, "peak_source": source, "mfu": flops / wall / peak}
    log(f"train step {name:22s} {wall:8.3f} s/step (cpu {cpu:8.3f} s)  "
        f"{flops / wall / 1e9:8.2f} GFLOP/s  MFU {100 * row['mfu']:5.1f}%")
    rows.append(row)
  return rows
