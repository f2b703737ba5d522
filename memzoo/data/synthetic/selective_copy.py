"""Selective copying (Gu & Dao 2023, "Mamba", §3.1 and Figure 2; the variable-spacing copying task
of S4's `copying.py`).

With M = `num_tokens` and vocabulary V, an example of length T = `seq_len` is

  inputs   . . d1 . . . d2 d3 . . . dM . . | m m ... m      (T - M tokens, then M markers)
  targets  -100 ...                    -100 | d1 d2 ... dM

Token 0 is noise, V - 1 the marker, and the data tokens d_i are drawn uniformly (with replacement)
from [1, V - 1) and placed in order at M distinct random positions of the first T - M tokens. At
the i-th marker the model must output d_i: it has to remember the data tokens and skip the noise.
"""

import numpy as np

from memzoo.data.synthetic.common import SyntheticTask, check_int, scored_only
from memzoo.data.tasks import register_task
from memzoo.errors import ConfigError


@register_task("selective_copy")
class SelectiveCopy(SyntheticTask):
  """Mamba's selective copying. Mamba's setup: V=16, M=16, T=4096 (4080 noise tokens)."""

  def __init__(self, vocab_size: int = 16, seq_len: int = 256, num_tokens: int = 16,
               seed: int = 0, num_train_examples: int = 100_000, num_val_examples: int = 1_000):
    super().__init__(seed, num_train_examples, num_val_examples)
    check_int("vocab_size", vocab_size, 3)
    check_int("num_tokens", num_tokens, 1)
    check_int("seq_len", seq_len, 2)
    if 2 * num_tokens > seq_len:
      raise ConfigError("config.data.num_tokens", f"{num_tokens} tokens and as many markers do not "
                        f"fit in seq_len {seq_len}", f"use num_tokens <= {seq_len // 2}")
    self.vocab_size, self.seq_len, self.num_tokens = vocab_size, seq_len, num_tokens

  def generate(self, rng, split):
    del split  # both splits are drawn alike, from independent streams
    m, t, v = self.num_tokens, self.seq_len, self.vocab_size
    data = rng.integers(1, v - 1, size=m)
    positions = np.sort(rng.choice(t - m, size=m, replace=False))
    inputs = np.zeros(t, np.int32)
    inputs[positions] = data
    inputs[t - m:] = v - 1
    return inputs, scored_only(t, np.arange(t - m, t), data)
