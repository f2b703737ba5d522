"""Induction heads: recall the token that followed a repeated trigger (Olsson et al. 2022; the
synthetic of H3, Fu et al. 2023, and Mamba, Gu & Dao 2023, §4.1.2).

With vocabulary V and length T, the inputs are uniform tokens from [0, V - 1) except a trigger
token V - 1 at one random position p in [0, T - 3] and again at the last position T - 1:

  inputs   x x x x TRIG a x x x x x x TRIG
  targets  -100 ...                    a      (only the last position is scored)

At the second trigger the model must predict `a`, the token that followed the first one.
"""

import numpy as np

from memzoo.data.synthetic.common import SyntheticTask, check_int, scored_only
from memzoo.data.tasks import register_task


@register_task("induction")
class InductionHeads(SyntheticTask):
  """Single-trigger associative recall. Mamba's setup: V=16, trained at T=256."""

  def __init__(self, vocab_size: int = 16, seq_len: int = 256, seed: int = 0,
               num_train_examples: int = 100_000, num_val_examples: int = 1_000):
    super().__init__(seed, num_train_examples, num_val_examples)
    check_int("vocab_size", vocab_size, 3)
    check_int("seq_len", seq_len, 3)
    self.vocab_size, self.seq_len = vocab_size, seq_len

  def generate(self, rng, split):
    del split  # both splits are drawn alike, from independent streams
    t, trigger = self.seq_len, self.vocab_size - 1
    inputs = rng.integers(0, trigger, size=t).astype(np.int32)
    first = rng.integers(0, t - 2)
    inputs[first] = inputs[t - 1] = trigger
    return inputs, scored_only(t, [t - 1], inputs[first + 1])
