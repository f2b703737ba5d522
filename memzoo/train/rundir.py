"""The run directory: crash-safe small files, and what changed since the run was started.

  <workdir>/config.json        the resolved config (JSON), rewritten at every start
  <workdir>/tokenizer.json     the task's tokenizer (JSON)
  <workdir>/metrics.jsonl      one JSON object per log event (see metrics.py)
  <workdir>/checkpoints/       orbax steps (see checkpoint.py)
  <workdir>/broken_checkpoints/  unreadable steps moved out of the way, never deleted
"""

import os
import sys
import time
from pathlib import Path

import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from memzoo.errors import UserError
from memzoo.train import config as config_lib


def write_atomic(path: Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: never a truncated file."""
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def prepare(workdir: Path, overwrite: bool) -> None:
  """Creates `workdir`; with `overwrite`, first moves a run already there aside."""
  if overwrite and jax.process_index() == 0:
    moved = move_aside(workdir)
    if moved:
      print(f"memzoo: --overwrite: moved the previous run to {moved}", file=sys.stderr)
  if overwrite and jax.process_count() > 1:
    multihost_utils.sync_global_devices("memzoo: --overwrite moved the run aside")
  workdir.mkdir(parents=True, exist_ok=True)


def move_aside(workdir: Path) -> Path | None:
  """`--overwrite`: renames an existing, non-empty run directory to `<workdir>.replaced-<time>`
  (nothing is deleted); returns the new name, or None if there was nothing to move."""
  if not workdir.is_dir() or not any(workdir.iterdir()):
    return None
  target = workdir.with_name(f"{workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
  suffix = 1
  while target.exists():
    target, suffix = Path(f"{target}.{suffix}"), suffix + 1
  workdir.rename(target)
  return target


def _flat(config) -> dict:
  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, (dict, ConfigDict)):
        yield from walk(value, f"{prefix}.{key}")
      else:
        yield f"{prefix}.{key}", value
  return dict(walk(config, "config"))


def config_changes(workdir: Path, config) -> list[str]:
  """`["config.train.steps: 20 -> 25", ...]`: fields that differ from the run's config.json."""
  file = workdir / "config.json"
  if not file.is_file():
    return []
  try:
    before = _flat(config_lib.from_json(file.read_text()))
  except ValueError:
    return [f"{file} is unreadable"]
  now = _flat(config_lib.from_json(config_lib.to_json(config)))
  keys = sorted(before.keys() | now.keys())
  return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]


def different_run_error(workdir: Path, config, detail: str) -> UserError:
  """The error for a workdir whose checkpoints belong to another model."""
  model_changes = [c for c in config_changes(workdir, config) if c.startswith("config.model.")]
  changes = f"; changed: {', '.join(model_changes)}" if model_changes else ""
  return UserError(f"--workdir: {workdir} holds a run of a different model ({detail}{changes}); "
                   "use another --workdir, or pass --overwrite to move the old run aside and "
                   "start afresh")
