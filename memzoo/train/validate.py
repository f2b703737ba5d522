"""Config checks that run before anything is compiled.

`check_config` compares every field with `base_config()` (which lists every field, each layer's
options under `config.model.<layer>` included): unknown fields (typos) and wrong types, then values
and the relations between fields. `check_layout` checks the mesh against the devices and the batch
and sequence against the mesh. Once the task is built (the corpus read, the vocabulary known),
`check_task` checks the eval set's size and `check_model` traces (never compiles) the train step;
`layer_errors` turns what only a layer can judge (raised while the model is built or traced) into
the same error. Every failure is a one-line `ConfigError` that names the field, the value and the
fix. `config.data` options beyond the text task's are the task's to check (`tasks.build_task`
names the field).
"""

import contextlib
import difflib
import math

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from memzoo.errors import ConfigError
from memzoo.models.layers import registry
from memzoo.train import config as config_lib
from memzoo.train import mesh as mesh_lib

_KINDS = {int: "an int", float: "a number", str: "a string", bool: "True or False",
          tuple: "a tuple"}
# Layer options that are sizes (and any option about chunks): positive when set. Other int
# options only need to be >= 0.
_SIZE_SUFFIXES = ("_size", "_dim", "_kernel", "_heads", "window", "block_q", "block_k")


def check_config(config) -> None:
  """Every field: known, of the right type, with a valid value."""
  _check_fields(config, config_lib.base_config(), "config")
  _check_int(config.seed, "config.seed", minimum=0)
  _check_int(config.mesh.cpu_devices, "config.mesh.cpu_devices", minimum=1, optional=True)
  _check_train(config.train)
  _check_model(config.model)


def check_layout(config, num_devices: int, num_processes: int) -> tuple[int, ...]:
  """Mesh sizes (data, fsdp, tensor, sequence) for `num_devices`; the batch and sequence length
  must divide over them."""
  sizes = mesh_lib.axis_sizes(config.mesh, num_devices)
  batch, data_parallel = config.train.batch_size, sizes["data"] * sizes["fsdp"]
  if batch % data_parallel:
    raise ConfigError("config.train.batch_size", f"{batch} is not divisible by the data-parallel "
                      f"size {data_parallel} (config.mesh.data={sizes['data']} x "
                      f"config.mesh.fsdp={sizes['fsdp']})", f"use a multiple of {data_parallel}")
  micro = config.train.grad_accum_steps * data_parallel
  if batch % micro:
    raise ConfigError("config.train.grad_accum_steps", f"{config.train.grad_accum_steps} "
                      f"micro-batches of batch_size {batch} do not split evenly over the "
                      f"data-parallel size {data_parallel}",
                      f"make batch_size a multiple of {micro}")
  if batch % num_processes:
    raise ConfigError("config.train.batch_size", f"{batch} is not divisible by the {num_processes}"
                      " processes", f"use a multiple of {num_processes}")
  seq_len = config.data.seq_len
  if isinstance(seq_len, int) and seq_len % sizes["sequence"]:
    raise ConfigError("config.data.seq_len", f"{seq_len} is not divisible by the sequence axis "
                      f"(config.mesh.sequence={sizes['sequence']})",
                      f"use a multiple of {sizes['sequence']}")
  return tuple(sizes.values())


def check_task(config, task) -> None:
  """The validation split holds the `eval_steps` batches evaluated."""
  needed = config.train.eval_steps * config.train.batch_size
  available = len(task.examples("val"))
  if available < needed:
    raise ConfigError("config.train.eval_steps", f"{config.train.eval_steps} batches of "
                      f"{config.train.batch_size} need {needed} validation windows but the val "
                      f"split has {available}", "lower eval_steps, or raise "
                      "config.data.val_fraction")


@contextlib.contextmanager
def layer_errors(config):
  """Turns an error a layer raises inside the block (its own checks, while the model is built or
  traced) into a ConfigError naming the option the message quotes, else `config.model`."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError, NotImplementedError) as e:
    message = " ".join(str(e).split())[:300]
    raise ConfigError(_suspect_option(config.model, message) or "config.model",
                      f"the model cannot be built or run: {message}",
                      "fix the option the message names") from e  # --debug shows the cause


def check_model(config, step_fn, abstract_args):
  """Traces the jitted `step_fn` on `abstract_args` (shapes and shardings only: nothing is computed
  or compiled) and returns the trace; a layer's error becomes a ConfigError (`layer_errors`).
  Call it under the mesh and rules the step runs with."""
  with layer_errors(config):
    return step_fn.trace(*abstract_args)


def _suspect_option(model, message: str) -> str | None:
  """The one layer option set away from its default whose value the error message quotes."""
  base = config_lib.base_config().model
  suspects = [f"config.model.{layer}.{name}"
              for kind in ("mixer", "ffn") for layer in registry.REGISTRIES[kind]
              for name, value in model[layer].items()
              if value is not None and value != base[layer][name] and repr(value) in message]
  return suspects[0] if len(suspects) == 1 else None


def _did_you_mean(key: str, valid) -> str:
  close = difflib.get_close_matches(key, list(valid), n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def _check_fields(node, base: ConfigDict, path: str) -> None:
  """Names and types of `node`'s fields against `base` (recursively)."""
  if not isinstance(node, (ConfigDict, dict)):
    raise ConfigError(path, f"expected a group of fields, got {node!r}",
                      f"set its fields, e.g. {path}.{next(iter(base.keys()))}")
  for key in node.keys():
    field = f"{path}.{key}"
    if key not in base:
      if path == "config.data":
        continue  # task options: tasks.build_task checks them against the chosen task
      raise ConfigError(field, f"unknown field{_did_you_mean(key, base.keys())}",
                        f"valid fields of {path}: {', '.join(sorted(base.keys()))}")
    if isinstance(base[key], ConfigDict):
      _check_fields(node[key], base[key], field)
    else:
      _check_type(node[key], base.get_type(key), base[key] is None, field)


def _check_type(value, expected: type, nullable: bool, field: str) -> None:
  if value is None:
    if nullable or expected is object:
      return
    raise ConfigError(field, "is None", f"set it to {_KINDS.get(expected, expected.__name__)}")
  is_bool = isinstance(value, (bool, np.bool_))
  ok = {int: isinstance(value, int) and not is_bool,
        float: isinstance(value, (int, float)) and not is_bool,
        bool: is_bool,
        str: isinstance(value, str),
        tuple: isinstance(value, (tuple, list))}.get(expected, True)
  if not ok:
    raise ConfigError(field, f"expected {_KINDS[expected]}, got {value!r} "
                      f"({type(value).__name__})", f"set it to {_KINDS[expected]}")


def _check_int(value, field: str, minimum: int, optional: bool = False) -> None:
  if optional and value is None:
    return
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ConfigError(field, f"must be an int >= {minimum}, got {value!r}",
                      f"set it to an int >= {minimum}")


def _check_number(value, field: str, low: float, high: float = math.inf,
                  low_open: bool = False, high_open: bool = True) -> None:
  inside = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high))
  if not inside:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ConfigError(field, f"must be a number in {interval}, got {value!r}",
                      f"set it inside {interval}")


def _check_train(train) -> None:
  for name in ("steps", "batch_size", "log_every", "eval_every", "eval_steps",
               "checkpoint_every", "keep_checkpoints", "max_bad_steps"):
    _check_int(train[name], f"config.train.{name}", minimum=1)
  _check_int(train.warmup_steps, "config.train.warmup_steps", minimum=0)
  _check_number(train.lr, "config.train.lr", 0.0, low_open=True)
  _check_number(train.min_lr, "config.train.min_lr", 0.0, train.lr, high_open=False)
  _check_number(train.weight_decay, "config.train.weight_decay", 0.0)
  _check_number(train.grad_clip, "config.train.grad_clip", 0.0, low_open=True)
  for name in ("b1", "b2"):
    _check_number(train[name], f"config.train.{name}", 0.0, 1.0)
  for step in train.debug_nan_steps:
    _check_int(step, "config.train.debug_nan_steps", minimum=1)
  _check_int(train.grad_accum_steps, "config.train.grad_accum_steps", minimum=1)
  _check_number(train.memory_values_lr_mult, "config.train.memory_values_lr_mult", 0.0)
  _check_number(train.memory_values_weight_decay, "config.train.memory_values_weight_decay", 0.0)


def _check_choice(name: str, kind: str, field: str) -> None:
  choices = sorted(registry.REGISTRIES[kind])
  if not isinstance(name, str) or name not in choices:
    raise ConfigError(field, f"unknown {kind} {name!r}", f"choose from {', '.join(choices)}")


def _check_dtype(name, field: str) -> None:
  try:
    floating = jnp.issubdtype(jnp.dtype(name), jnp.floating)
  except TypeError:
    floating = False
  if not floating:
    raise ConfigError(field, f"{name!r} is not a floating-point dtype",
                      "use 'float32' or 'bfloat16'")


def _check_model(model) -> None:
  for name in ("d_model", "num_layers", "num_heads"):
    _check_int(model[name], f"config.model.{name}", minimum=1)
  for name in ("vocab_size", "num_kv_heads", "mlp_dim"):
    _check_int(model[name], f"config.model.{name}", minimum=1, optional=True)
  if model.d_model % model.num_heads:
    raise ConfigError("config.model.d_model", f"{model.d_model} is not divisible by "
                      f"config.model.num_heads={model.num_heads}",
                      f"use a multiple of {model.num_heads}, or change num_heads")
  if model.num_kv_heads is not None and model.num_heads % model.num_kv_heads:
    raise ConfigError("config.model.num_kv_heads", f"{model.num_kv_heads} does not divide "
                      f"config.model.num_heads={model.num_heads}",
                      "use a divisor of num_heads, or None for no grouping")
  if not model.mixers:
    raise ConfigError("config.model.mixers", "is empty", "name at least one mixer")
  for name in model.mixers:
    _check_choice(name, "mixer", "config.model.mixers")
  _check_choice(model.ffn, "ffn", "config.model.ffn")
  _check_dtype(model.dtype, "config.model.dtype")
  _check_dtype(model.param_dtype, "config.model.param_dtype")
  _check_number(model.aux_loss_coef, "config.model.aux_loss_coef", 0.0)
  if model.remat not in ("none", "full", "dots_saveable"):
    raise ConfigError("config.model.remat", f"unknown policy {model.remat!r}",
                      "choose from none, full, dots_saveable")
  _check_choice(model.memory_ffn, "ffn", "config.model.memory_ffn")
  for kind in ("mixer", "ffn", "input_branch"):
    for layer in registry.REGISTRIES[kind]:
      _check_layer_options(model[layer], f"config.model.{layer}")


def _check_layer_options(options, path: str) -> None:
  """Int options are >= 0, sizes (chunk and block sizes, windows, dims) > 0, width factors
  (`expand_*`, `expansion`) > 0; the layer itself judges the rest (`layer_errors`)."""
  for name, value in options.items():
    if isinstance(value, (ConfigDict, dict)):  # a nested layer's options (mag.memory)
      _check_layer_options(value, f"{path}.{name}")
    elif isinstance(value, int) and not isinstance(value, bool):
      size = name.endswith(_SIZE_SUFFIXES) or "chunk" in name
      _check_int(value, f"{path}.{name}", minimum=1 if size else 0)
    elif name.startswith("expan") and value is not None:
      _check_number(value, f"{path}.{name}", 0.0, low_open=True)
