"""Experiment configs: an ml_collections ConfigDict built by a Python file's `get_config()`.

`base_config()` holds every field with its default, so a config file only states what its
experiment changes, and every field (including each layer's options under `config.model.<layer>`)
can be overridden on the command line:
`memzoo-train --config configs/x.py --config.model.d_model=256`.
"""

import inspect
import json
import types
import typing
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from memzoo.errors import ConfigError
from memzoo.models.layers import registry
from memzoo.train import sharding

# Model fields shared by all layers; a layer constructor parameter with one of these names is fed
# from here rather than from the layer's own sub-config.
MODEL_FIELDS = dict(
    vocab_size=config_dict.placeholder(int),  # None: taken from the task's tokenizer
    d_model=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=config_dict.placeholder(int),  # None: num_heads (no GQA)
    mixers=("attention",),  # one name per layer; a shorter tuple repeats
    ffn="swiglu",
    mlp_dim=config_dict.placeholder(int),  # None: 8/3 d_model rounded up to 64
    tie_embeddings=True,
    dtype="float32",  # compute dtype ("bfloat16" on accelerators)
    param_dtype="float32",
    aux_loss_coef=0.01,  # weight of layer auxiliary losses (e.g. MoM load balancing)
    memory_layers=(),  # these layers' feed-forward is `memory_ffn`
    memory_ffn="pkm",  # pkm | peer
    memory_share_values=False,  # one pkm value table for all memory layers (Memory+)
    engram_layers=(),  # these layers add an Engram n-gram memory before their mixer
    remat="none",  # none | full | dots_saveable: what each block keeps for the backward pass
    scan_layers=False,  # nnx.scan over repeats of the mixer pattern: compile time flat in depth
)


def _placeholder_for(annotation):
  """A None default of an annotated parameter becomes a typed placeholder (overridable on the
  CLI)."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  kind = typing.get_origin(args[0]) or args[0] if args else object
  return config_dict.placeholder(kind if kind in (int, float, str, bool, tuple) else object)


def layer_options(cls: type) -> ml_collections.ConfigDict:
  """The keyword options of a layer class with their defaults, minus the shared model fields."""
  options = ml_collections.ConfigDict()
  for name, p in inspect.signature(cls.__init__).parameters.items():
    if name in ("self", "rngs") or name in MODEL_FIELDS or p.default is inspect.Parameter.empty:
      continue
    options[name] = _placeholder_for(p.annotation) if p.default is None else p.default
  return options


def _fresh(value):
  """A new placeholder for a typed one (a FieldReference shared by two configs links them)."""
  if isinstance(value, config_dict.FieldReference):
    return config_dict.placeholder(value.get_type())
  return value


def base_config() -> ml_collections.ConfigDict:
  """Every field memzoo reads, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      task="text", path=config_dict.placeholder(str), tokenizer="char", seq_len=64,
      val_fraction=0.1))

  c.model = ml_collections.ConfigDict({k: _fresh(v) for k, v in MODEL_FIELDS.items()})
  registry.lookup("mixer", "attention")  # loads the built-in layers
  for kind in registry.REGISTRIES:
    for name, cls in sorted(registry.REGISTRIES[kind].items()):
      c.model[name] = layer_options(cls)

  c.train = ml_collections.ConfigDict(dict(
      steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
      b1=0.9, b2=0.99, grad_clip=1.0, log_every=10, eval_every=250, eval_steps=20,
      checkpoint_every=500, keep_checkpoints=3,
      memory_values_lr_mult=1.0, memory_values_weight_decay=0.0,
      grad_accum_steps=1,  # the batch is split into this many micro-batches, grads summed
      max_bad_steps=5,  # stop after this many consecutive steps with a non-finite loss or gradient
      debug_nan_steps=(),  # testing hook: these steps' losses (so gradients) are made NaN
      # memzoo-train's persistent compilation cache (train/compilation_cache.py): None for
      # <memzoo cache>/jax, "" for none.
      compilation_cache_dir=config_dict.placeholder(str)))

  # Device mesh: sizes per axis within a slice (-1 fills the remaining devices), across slices
  # over the data-center network (dcn_*), and the logical-axis -> mesh-axis rules. cpu_devices:
  # how many devices memzoo-train splits a CPU host into (None: one per core, up to 8, when the
  # mesh is data-parallel only; see train/distributed.py); GPU / TPU hosts ignore it.
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, sequence=1,
      dcn_data=1, dcn_fsdp=1, dcn_tensor=1, dcn_sequence=1,
      rules=sharding.DEFAULT_RULES, cpu_devices=config_dict.placeholder(int)))

  # Multi-host: jax.distributed.initialize before anything touches a device. Leave the fields
  # None to let JAX detect them (TPU pods, SLURM); the JAX_COORDINATOR_ADDRESS environment
  # variable also turns it on.
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int), process_id=config_dict.placeholder(int)))
  return c


def data_options(config) -> dict:
  """`config.data` as plain options for the task: unset placeholders dropped."""
  return {k: v for k, v in config.data.items() if v is not None}


def to_json(config) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Rebuilds a config saved by `to_json` (lists back to tuples)."""
  def tuples(x):
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    return x
  return ml_collections.ConfigDict(tuples(json.loads(text)))


def load_module(path: str) -> types.ModuleType:
  """Executes a Python config file and returns it as a module (its `get_config`, `get_sweep`)."""
  file = Path(path)
  if not file.is_file():
    raise ConfigError("--config", f"no such config file {path!r}", "pass a path to a .py config")
  module = types.ModuleType(file.stem)
  module.__file__ = str(file)
  exec(compile(file.read_text(), str(file), "exec"), module.__dict__)
  return module


def load_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` from a Python config file."""
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError("--config", f"{path!r} defines no get_config()", "add get_config()")
  return module.get_config()
