"""Tasks: what a training run reads. A task turns its config into random-access examples.

Every task yields examples `{"inputs": int32[T], "targets": int32[T]}`; a target of `IGNORE` (-100)
is not scored. `config.data.task` names the task, the other `config.data` fields are its options:

  @register_task("text")
  class TextTask:
    def __init__(self, path=None, tokenizer="char", seq_len=64, val_fraction=0.1): ...
    vocab_size: int
    tokenizer: a tokenizer or None
    def examples(self, split) -> grain.MapDataset    # split in ("train", "val")
"""

import inspect
from typing import Any, Mapping

import grain
import numpy as np

from memzoo.data import corpus, tokenizers
from memzoo.errors import ConfigError

IGNORE = -100
TASKS: dict[str, type] = {}


def register_task(name: str):
  def decorator(cls):
    TASKS[name] = cls
    return cls
  return decorator


def _load_builtin_tasks() -> None:
  import memzoo.data.synthetic  # noqa: F401  (registers the synthetic tasks)


def build_task(data_cfg: Mapping[str, Any]):
  """Instantiates `config.data.task` with the other `config.data` fields as options."""
  _load_builtin_tasks()
  name = data_cfg.get("task", "text")
  if name not in TASKS:
    raise ConfigError("config.data.task", f"unknown task {name!r}",
                      f"choose one of {sorted(TASKS)}")
  cls = TASKS[name]
  accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
  options = {k: v for k, v in data_cfg.items() if k != "task"}
  for key in options:
    if key not in accepted:
      raise ConfigError(f"config.data.{key}", f"not an option of task {name!r}",
                        f"valid options: {', '.join(accepted)}")
  return cls(**options)


@register_task("text")
class TextTask:
  """Next-token prediction on a text corpus: windows of `seq_len + 1` tokens.

  nanoGPT's split: the first `1 - val_fraction` of the tokens train, the rest validate.
  `path=None` reads the shipped tiny Shakespeare.
  """

  def __init__(self, path: str | None = None, tokenizer: str = "char", seq_len: int = 64,
               val_fraction: float = 0.1):
    tokenizers.check_kind(tokenizer)
    if not isinstance(seq_len, int) or seq_len < 1:
      raise ConfigError("config.data.seq_len", f"must be a positive int, got {seq_len!r}")
    if not 0.0 < val_fraction < 1.0:
      raise ConfigError("config.data.val_fraction", f"must be in (0, 1), got {val_fraction!r}")
    if tokenizer == "char":
      text = corpus.read_text(path)
      self.tokenizer = tokenizers.CharTokenizer.from_text(text)
      tokens = self.tokenizer.encode(text)
    else:
      self.tokenizer = tokenizers.ByteTokenizer()
      tokens = self.tokenizer.encode(corpus.read_bytes(path))
    n_train = int(len(tokens) * (1.0 - val_fraction))
    self.splits = {"train": tokens[:n_train], "val": tokens[n_train:]}
    for split, toks in self.splits.items():
      if len(toks) <= seq_len + 1:
        raise ConfigError("config.data.seq_len",
                          f"{seq_len} leaves no full window in the {split} split "
                          f"({len(toks)} tokens)",
                          "use a shorter seq_len or a longer corpus")
    self.seq_len = seq_len
    self.vocab_size = self.tokenizer.vocab_size

  def examples(self, split: str) -> grain.MapDataset:
    tokens, t = self.splits[split], self.seq_len

    def window(start):
      chunk = tokens[start:start + t + 1]
      return {"inputs": chunk[:-1], "targets": chunk[1:]}

    return grain.MapDataset.range(len(tokens) - t).map(window)


def as_int32(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.int32) for k, v in batch.items()}
