"""Sweeps in a config file, big_vision style: `get_sweep()` returns a list of override dicts.

  def get_sweep():
    return hyper.product(
        hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)]),
        hyper.sweep("model.d_model", [32, 64, 128]),
        hyper.zipit(hyper.sweep("data.seq_len", [64, 128, 256]),
                    hyper.sweep("data.num_kv_pairs", [4, 8, 16])))

Each dict is one run; its keys are dotted paths under `config` ("model.d_model") and its values
replace the fields of `get_config()`, exactly as `--config.<key>=<value>` would.
"""

import itertools
import sys
from typing import Any, Iterable, Sequence

Override = dict[str, Any]


def sweep(key: str, values: Iterable) -> list[Override]:
  """One run per value of `key`."""
  return [{key: v} for v in values]


def _merge(parts: Sequence[Override]) -> Override:
  merged = {}
  for part in parts:
    for key, value in part.items():
      if key in merged:
        raise ValueError(f"sweep key {key!r} is set by two combined axes; set it in one")
      merged[key] = value
  return merged


def product(*axes: list[Override]) -> list[Override]:
  """Every combination of one entry per axis; the last axis varies fastest."""
  return [_merge(combo) for combo in itertools.product(*axes)]


def zipit(*axes: list[Override]) -> list[Override]:
  """The i-th entries of equally long axes, together: e.g. (seq_len, pairs) in lockstep."""
  lengths = {len(axis) for axis in axes}
  if len(lengths) > 1:
    raise ValueError(f"zipit needs axes of one length, got lengths {sorted(lengths)}")
  return [_merge(parts) for parts in zip(*axes)]


def available_mixers(names: Sequence[str]) -> tuple[str, ...]:
  """The registered mixers among `names`, in order; says on stderr which ones it left out."""
  import memzoo.models.layers  # noqa: F401  (registers the built-in layers)
  from memzoo.models.layers.registry import REGISTRIES

  kept = tuple(n for n in names if n in REGISTRIES["mixer"])
  missing = [n for n in names if n not in REGISTRIES["mixer"]]
  if missing:
    print(f"memzoo: mixers not registered in this checkout, left out of the sweep: "
          f"{', '.join(missing)}", file=sys.stderr)
  return kept


def value_label(value) -> str:
  """How a sweep value reads in run names, tables and legends: tuples as `a+b`, floats short."""
  if isinstance(value, (tuple, list)):
    return "+".join(value_label(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)
