"""What the synthetic tasks share: per-example seeding, the split streams, option checks.

An example is a pure function of `(seed, split, index)`: datasets are random-access grain
`MapDataset`s that need no storage, any example can be regenerated alone, and the train and val
splits draw from independent random streams.
"""

import grain
import numpy as np

from memzoo.data.tasks import IGNORE
from memzoo.errors import ConfigError

SPLITS = ("train", "val")


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The random generator of example `index` of `split`."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


def check_int(field: str, value, minimum: int) -> None:
  """Raises a ConfigError naming `config.data.<field>` unless `value` is an int >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ConfigError(f"config.data.{field}", f"must be an int >= {minimum}, got {value!r}")


def scored_only(length: int, positions, values) -> np.ndarray:
  """Targets `int32[length]`: `values` at `positions`, IGNORE elsewhere."""
  targets = np.full(length, IGNORE, np.int32)
  targets[positions] = values
  return targets


class SyntheticTask:
  """Base of the generated tasks.

  A subclass's `__init__` states every option (they come from `config.data`), calls
  `super().__init__(seed, num_train_examples, num_val_examples)`, sets `vocab_size` and `seq_len`,
  and implements `generate(rng, split) -> (inputs int32[seq_len], targets int32[seq_len])` (the
  split matters only to tasks that draw content from a split of a corpus, like niah's filler).
  """

  tokenizer = None  # the tasks' ids are symbols, not text (niah overrides this)

  def __init__(self, seed: int, num_train_examples: int, num_val_examples: int):
    check_int("seed", seed, 0)
    check_int("num_train_examples", num_train_examples, 1)
    check_int("num_val_examples", num_val_examples, 1)
    self.seed = seed
    self.num_examples = {"train": num_train_examples, "val": num_val_examples}

  def generate(self, rng: np.random.Generator, split: str) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def example(self, split: str, index: int) -> dict[str, np.ndarray]:
    """Example `index` of `split`: `{"inputs": int32[T], "targets": int32[T]}`."""
    inputs, targets = self.generate(example_rng(self.seed, split, index), split)
    return {"inputs": np.asarray(inputs, np.int32), "targets": np.asarray(targets, np.int32)}

  def examples(self, split: str) -> grain.MapDataset:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return grain.MapDataset.range(self.num_examples[split]).map(
        lambda index: self.example(split, index))
