"""Imports an experiments/ script as a module, for tests of its functions."""

import importlib.util
from pathlib import Path

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def load(relative_path: str):
  """The module of `experiments/<relative_path>`, executed (its `main` is not run)."""
  path = EXPERIMENTS / relative_path
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
