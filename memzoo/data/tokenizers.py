"""Tokenizers: characters (vocabulary built from the corpus) and raw UTF-8 bytes (256 ids)."""

import json

import numpy as np

from memzoo.errors import ConfigError


class CharTokenizer:
  """One id per distinct character of the corpus, in sorted order (65 for tiny Shakespeare)."""

  kind = "char"

  def __init__(self, chars: str):
    self.chars = chars
    self._index = {c: i for i, c in enumerate(chars)}

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    missing = sorted(set(text) - self._index.keys())
    if missing:
      raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
    return np.array([self._index[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids)

  def to_json(self) -> str:
    return json.dumps({"kind": self.kind, "chars": self.chars})


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255; decoding replaces invalid sequences."""

  kind = "byte"
  vocab_size = 256

  def encode(self, text: str | bytes) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

  def to_json(self) -> str:
    return json.dumps({"kind": self.kind})


def from_json(data: str):
  spec = json.loads(data)
  if spec["kind"] == "char":
    return CharTokenizer(spec["chars"])
  if spec["kind"] == "byte":
    return ByteTokenizer()
  raise ValueError(f"unknown tokenizer kind {spec['kind']!r}")


def check_kind(kind: str) -> None:
  if kind not in ("char", "byte"):
    raise ConfigError("config.data.tokenizer", f"unknown tokenizer {kind!r}",
                      "use 'char' or 'byte'")
