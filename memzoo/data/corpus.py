"""Text corpora: the shipped tiny Shakespeare, or any UTF-8 file."""

import gzip
import importlib.resources
from pathlib import Path

from memzoo.errors import ConfigError

SHIPPED = "tinyshakespeare.txt.gz"  # Karpathy's char-rnn corpus, 1,115,394 bytes, public domain


def read_bytes(path: str | None, field: str = "config.data.path") -> bytes:
  """The corpus bytes: the shipped tiny Shakespeare when `path` is None, else the file at `path`."""
  if path is None:
    return gzip.decompress(importlib.resources.files("memzoo.data").joinpath(SHIPPED).read_bytes())
  file = Path(path).expanduser()
  if not file.is_file():
    problem = "a directory, not a file" if file.is_dir() else "no such file"
    raise ConfigError(field, f"{str(file)!r}: {problem}",
                      "point it at a text file, or set it to None for the shipped tiny Shakespeare")
  data = file.read_bytes()
  if not data:
    raise ConfigError(field, f"{str(file)!r} is empty", "point it at a non-empty text file")
  return data


def read_text(path: str | None, field: str = "config.data.path") -> str:
  """The corpus decoded as UTF-8 (a clear error for other encodings)."""
  data = read_bytes(path, field)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(field, f"{path!r} is not UTF-8 (byte {e.start})",
                      "convert it to UTF-8, or set config.data.tokenizer='byte'") from None
