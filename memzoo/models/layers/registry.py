"""Name -> layer registries. Configs choose layers by name; nothing else imports a layer class.

  @register_mixer("retention")
  class MultiScaleRetention(Mixer): ...

`build(kind, name, model_cfg, rngs=...)` calls the class with:
  * every top-level field of `model_cfg` whose name is a parameter of the class's `__init__`
    (`d_model`, `num_heads`, `num_kv_heads`, `dtype`, ...), then
  * the options in `model_cfg.<name>` (a per-layer sub-config, e.g. `config.model.retention`),
    which override the top-level fields and must all be parameters of `__init__`.
"""

import inspect
from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from memzoo.errors import ConfigError

# Kinds: sequence mixers, feed-forward layers, and branches added to the residual stream before
# the mixer of chosen layers (Engram).
REGISTRIES: dict[str, dict[str, type]] = {"mixer": {}, "ffn": {}, "input_branch": {}}


def _register(kind: str, name: str):
  def decorator(cls):
    if name in REGISTRIES[kind]:
      raise ValueError(f"{kind} {name!r} registered twice")
    REGISTRIES[kind][name] = cls
    return cls
  return decorator


def register_mixer(name: str):
  return _register("mixer", name)


def register_ffn(name: str):
  return _register("ffn", name)


def register_input_branch(name: str):
  return _register("input_branch", name)


def _load_builtin_layers() -> None:
  import memzoo.models.layers  # noqa: F401  (importing the package registers every built-in layer)


def lookup(kind: str, name: str) -> type:
  _load_builtin_layers()
  registry = REGISTRIES[kind]
  if name not in registry:
    raise ConfigError(f"config.model ({kind} {name!r})", f"unknown {kind}",
                      f"choose one of {sorted(registry)}")
  return registry[name]


def constructor_options(cls: type) -> list[str]:
  params = inspect.signature(cls.__init__).parameters
  return [p for p in params if p not in ("self", "rngs")]


def _as_dtype(value):
  return jnp.dtype(value) if isinstance(value, str) else value


def build(kind: str, name: str, model_cfg: Mapping[str, Any], *, rngs: nnx.Rngs, **fixed):
  """Instantiates the registered `kind` layer `name` from the model config (see module doc);
  `fixed` arguments are set by the caller (e.g. the layer index), not by the config."""
  cls = lookup(kind, name)
  accepted = constructor_options(cls)
  kwargs = {k: model_cfg[k] for k in accepted if k in model_cfg}
  options = model_cfg.get(name) or {}
  for key in options:
    if key not in accepted:
      raise ConfigError(f"config.model.{name}.{key}", f"not an option of {cls.__name__}",
                        f"valid options: {', '.join(accepted)}")
  kwargs.update(options)
  for key in ("dtype", "param_dtype"):
    if key in kwargs:
      kwargs[key] = _as_dtype(kwargs[key])
  return cls(**{**kwargs, **fixed}, rngs=rngs)
