"""Single-needle passkey retrieval in a haystack of real text (RULER's S-NIAH, passkey variant).

Hsieh et al. 2024, "RULER: What's the real context size of your long-context language models?";
the passkey template follows Mohtashami & Jaggi 2023. Characters are tokens. One example is
`seq_len + 1` characters, read as inputs `[:-1]` and targets `[1:]`:

  <filler[:p]> NEEDLE <filler[p:]> QUESTION <key>
  NEEDLE   = "\\nThe pass key is <key>. Remember it. <key> is the pass key.\\n"
  QUESTION = "\\nWhat is the pass key? The pass key is "

`key` is `key_digits` random decimal digits, the filler a random window of the corpus (the first
`1 - val_fraction` of it for train, the rest for val), and the needle starts at character
`p = round(depth * len(filler))` of the filler (`depth=None`: uniform in [0, 1] per example). Only
the key's digits after the question are scored.
"""

import numpy as np

from memzoo.data import corpus, tokenizers
from memzoo.data.synthetic.common import SyntheticTask, check_int, scored_only
from memzoo.data.tasks import register_task
from memzoo.errors import ConfigError

NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is "
DIGITS = "0123456789"


@register_task("niah")
class NeedleInAHaystack(SyntheticTask):
  """Passkey retrieval; `seq_len` is the context length, `depth` the needle's relative position."""

  def __init__(self, seq_len: int = 256, depth: float | None = None, key_digits: int = 5,
               path: str | None = None, val_fraction: float = 0.1, seed: int = 0,
               num_train_examples: int = 100_000, num_val_examples: int = 1_000):
    super().__init__(seed, num_train_examples, num_val_examples)
    check_int("key_digits", key_digits, 1)
    check_int("seq_len", seq_len, 1)
    if depth is not None and not 0.0 <= depth <= 1.0:
      raise ConfigError("config.data.depth", f"must be in [0, 1] or None, got {depth!r}")
    if not 0.0 < val_fraction < 1.0:
      raise ConfigError("config.data.val_fraction", f"must be in (0, 1), got {val_fraction!r}")
    fixed = len(NEEDLE.format(key="0" * key_digits)) + len(QUESTION) + key_digits
    self.filler_len = seq_len + 1 - fixed
    if self.filler_len < 1:
      raise ConfigError("config.data.seq_len", f"{seq_len} leaves no room for filler: the needle, "
                        f"question and key take {fixed} characters", f"use seq_len >= {fixed}")
    text = corpus.read_text(path)
    self.tokenizer = tokenizers.CharTokenizer.from_text(text + NEEDLE + QUESTION + DIGITS)
    tokens = self.tokenizer.encode(text)
    n_train = int(len(tokens) * (1.0 - val_fraction))
    self.filler = {"train": tokens[:n_train], "val": tokens[n_train:]}
    for split, toks in self.filler.items():
      if len(toks) < self.filler_len:
        raise ConfigError("config.data.seq_len", f"{seq_len} needs {self.filler_len} filler "
                          f"characters; the {split} part of the corpus has {len(toks)}",
                          "use a shorter seq_len or a longer corpus")
    self.seq_len, self.depth, self.key_digits = seq_len, depth, key_digits
    self.vocab_size = self.tokenizer.vocab_size

  def generate(self, rng, split):
    key = rng.integers(0, 10, size=self.key_digits)
    key_text = "".join(DIGITS[d] for d in key)
    filler = self.filler[split]
    start = rng.integers(0, len(filler) - self.filler_len + 1)
    haystack = filler[start:start + self.filler_len]
    depth = rng.uniform() if self.depth is None else self.depth
    at = round(depth * self.filler_len)
    sequence = np.concatenate([
        haystack[:at], self.tokenizer.encode(NEEDLE.format(key=key_text)), haystack[at:],
        self.tokenizer.encode(QUESTION + key_text)])
    t, k = self.seq_len, self.key_digits
    return sequence[:-1], scored_only(t, np.arange(t - k, t), sequence[-k:])
