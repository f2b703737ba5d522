"""Multi-query associative recall (MQAR), as Zoology defines it.

Arora, Eyuboglu et al. 2023, "Zoology: Measuring and improving recall in efficient language
models", §3.1 and `zoology/data/multiquery_ar.py`. With N pairs, vocabulary V and length T:

  inputs   k1 v1 k2 v2 ... kN vN | . . ki . . . kj . . . . kl . .   (query region: T - 2N tokens)
  targets  -100 everywhere except the position of each query key, which holds that key's value

* keys are drawn without replacement from [1, V/2), values without replacement from [V/2, V);
* the context `k1 v1 ... kN vN` is repeated `num_passes` times (JRT-style, Arora et al. 2024);
* the query region has `(T - context) / 2` even slots; the N keys are placed in N distinct slots
  drawn with probability p_i ∝ a·i^(a-1), i = 1..slots (a = `power_a` = 0.01 favours early slots);
* the other query-region tokens are 0, or with `random_non_queries` uniform over [0, V).

The model reads a repeated key and must predict its value. Zoology's accuracy (per example, the
fraction of the N values predicted, averaged) equals memzoo's accuracy over scored tokens because
every example has exactly N scored tokens.
"""

import numpy as np

from memzoo.data.synthetic.common import SyntheticTask, check_int, scored_only
from memzoo.data.tasks import register_task
from memzoo.errors import ConfigError


@register_task("mqar")
class MultiQueryAssociativeRecall(SyntheticTask):
  """Zoology's MQAR. Zoology's defaults: V=8192, 100k train / 3k test examples, power_a=0.01."""

  def __init__(self, vocab_size: int = 8192, seq_len: int = 64, num_kv_pairs: int = 4,
               num_passes: int = 1, power_a: float = 0.01, random_non_queries: bool = True,
               seed: int = 0, num_train_examples: int = 100_000, num_val_examples: int = 3_000):
    super().__init__(seed, num_train_examples, num_val_examples)
    check_int("num_kv_pairs", num_kv_pairs, 1)
    check_int("num_passes", num_passes, 1)
    check_int("seq_len", seq_len, 2)
    if seq_len % 2:
      raise ConfigError("config.data.seq_len", f"must be even for mqar, got {seq_len}")
    if not isinstance(vocab_size, int) or vocab_size <= seq_len:
      raise ConfigError("config.data.vocab_size", f"must exceed seq_len ({seq_len}) for mqar, "
                        f"got {vocab_size!r}", "raise vocab_size (Zoology uses 8192)")
    context = 2 * num_kv_pairs * num_passes
    if context + 2 * num_kv_pairs > seq_len:
      raise ConfigError("config.data.num_kv_pairs",
                        f"{num_kv_pairs} pairs x {num_passes} passes plus their queries need "
                        f"{context + 2 * num_kv_pairs} tokens, more than seq_len {seq_len}",
                        "lower num_kv_pairs or raise seq_len")
    if not power_a > 0:
      raise ConfigError("config.data.power_a", f"must be > 0, got {power_a!r}")
    self.vocab_size, self.seq_len = vocab_size, seq_len
    self.num_kv_pairs, self.num_passes = num_kv_pairs, num_passes
    self.random_non_queries = random_non_queries
    self.context = context
    slots = np.arange(1, (seq_len - context) // 2 + 1, dtype=np.float64)
    p = power_a * slots ** (power_a - 1)
    self.slot_probs = p / p.sum()

  def generate(self, rng, split):
    del split  # both splits are drawn alike, from independent streams
    n, v, t = self.num_kv_pairs, self.vocab_size, self.seq_len
    keys = 1 + rng.choice(v // 2 - 1, size=n, replace=False)
    values = v // 2 + rng.choice(v - v // 2, size=n, replace=False)
    slots = rng.choice(len(self.slot_probs), size=n, replace=False, p=self.slot_probs)
    query_positions = self.context + 2 * slots

    inputs = np.zeros(t, np.int32)
    inputs[:self.context] = np.tile(np.stack([keys, values], axis=1).reshape(-1), self.num_passes)
    inputs[query_positions] = keys
    if self.random_non_queries:
      filler = inputs == 0  # keys are >= 1 and values >= V/2: zeros are exactly the filler
      inputs[filler] = rng.integers(0, v, size=int(filler.sum()))
    return inputs, scored_only(t, query_positions, values)
