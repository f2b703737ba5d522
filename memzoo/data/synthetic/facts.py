"""Fact memorisation: a fixed set of N key -> value facts, packed into sequences.

The capacity study of experiments/memory_layers/README.md (2): a model can only answer by storing
the facts in its parameters, so recall against N measures how much a layer memorises. With key
sub-vocabulary K and value sub-vocabulary V, the token ids are

  0 PAD | 1 SEP | 2 EOS | keys [3, 3 + K) | values [3 + K, 3 + K + V) = vocab_size

* the fact set (a function of `seed` alone): N distinct 2-token keys, drawn without replacement
  from the K^2 key pairs as flat indices (`Generator.choice` samples with Floyd's algorithm in O(N)
  memory when N is a small fraction of K^2, so a large key space is never materialised), each
  with a 2-token value drawn uniformly (values may repeat across facts): `2 N log2(V)` bits;
* an example packs F = seq_len // 6 facts, `k1 k2 SEP v1 v2 EOS` each, then PAD to seq_len:

    inputs   k1 k2 SEP v1 v2 EOS  k1' k2' SEP v1' v2' EOS ... PAD
    targets  .  .  v1  v2 .  .    .   .   v1' v2' .   .   ... .      (. = IGNORE)

  as in every task, targets[t] is the token after inputs[:t+1]: v1 is scored at SEP's position
  and v2 at v1's (teacher-forced), nothing else is;
* train example: F distinct facts drawn uniformly (distinct, so attention cannot copy a value from
  an earlier copy of the same fact in the context);
* val example i: facts iF, ..., iF + F - 1 in fact-set order; slots past fact N - 1 are PAD with
  IGNORE targets. The val split holds every fact exactly once when num_val_examples * F >= N
  (None picks ceil(N / F)); fewer examples raise a ConfigError.

Accuracy over scored tokens is per value token recall (each fact counts twice), not exact match of
both value tokens.
"""

import numpy as np

from memzoo.data.synthetic.common import SPLITS, SyntheticTask, check_int, scored_only
from memzoo.data.tasks import register_task
from memzoo.errors import ConfigError

PAD, SEP, EOS = 0, 1, 2
FIRST_KEY = 3
FACT_LEN = 6  # k1 k2 SEP v1 v2 EOS


@register_task("facts")
class FactRecall(SyntheticTask):
  """N fixed 2-token-key -> 2-token-value facts (see module doc). `facts_per_seq = seq_len // 6`."""

  def __init__(self, num_facts: int = 4096, key_vocab: int = 256, value_vocab: int = 256,
               seq_len: int = 48, seed: int = 0, num_train_examples: int = 100_000,
               num_val_examples: int | None = None):
    check_int("seq_len", seq_len, FACT_LEN)
    check_int("key_vocab", key_vocab, 1)
    check_int("value_vocab", value_vocab, 1)
    check_int("num_facts", num_facts, 1)
    self.facts_per_seq = seq_len // FACT_LEN
    if num_facts > key_vocab ** 2:
      raise ConfigError("config.data.num_facts", f"{num_facts} facts need distinct keys but "
                        f"key_vocab {key_vocab} has only {key_vocab ** 2} key pairs",
                        "raise key_vocab or lower num_facts")
    if num_facts < self.facts_per_seq:
      raise ConfigError("config.data.num_facts", f"{num_facts} facts cannot fill a training "
                        f"sequence of {self.facts_per_seq} distinct facts (seq_len {seq_len})",
                        "raise num_facts or lower seq_len")
    covering = -(-num_facts // self.facts_per_seq)
    if num_val_examples is None:
      num_val_examples = covering
    check_int("num_val_examples", num_val_examples, 1)
    if num_val_examples < covering:
      raise ConfigError("config.data.num_val_examples",
                        f"{num_val_examples} examples x {self.facts_per_seq} facts do not cover "
                        f"the {num_facts} facts", f"use at least {covering} (or None)")
    super().__init__(seed, num_train_examples, num_val_examples)
    self.num_facts, self.seq_len = num_facts, seq_len
    self.vocab_size = FIRST_KEY + key_vocab + value_vocab
    rng = np.random.default_rng([seed, len(SPLITS)])  # apart from the [seed, split, index] streams
    flat = rng.choice(key_vocab ** 2, size=num_facts, replace=False)
    self.keys = (FIRST_KEY + np.stack(np.divmod(flat, key_vocab), axis=1)).astype(np.int32)
    first_value = FIRST_KEY + key_vocab
    self.values = (first_value + rng.integers(value_vocab, size=(num_facts, 2))).astype(np.int32)

  def pack(self, facts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(inputs, targets)`, int32[seq_len] each, for the facts `facts` (indices, at most F)."""
    n = len(facts)
    block = np.empty((n, FACT_LEN), np.int32)
    block[:, 0:2], block[:, 2], block[:, 3:5], block[:, 5] = (
        self.keys[facts], SEP, self.values[facts], EOS)
    inputs = np.full(self.seq_len, PAD, np.int32)
    inputs[:n * FACT_LEN] = block.reshape(-1)
    sep = FACT_LEN * np.arange(n) + 2
    positions = np.stack([sep, sep + 1], axis=1)  # v1 predicted at SEP, v2 at v1
    return inputs, scored_only(self.seq_len, positions.reshape(-1), self.values[facts].reshape(-1))

  def generate(self, rng, split):
    del split  # only the train split is random (see `example`)
    return self.pack(rng.choice(self.num_facts, size=self.facts_per_seq, replace=False))

  def example(self, split: str, index: int) -> dict[str, np.ndarray]:
    """Train: random facts; val: facts `index * F ...` in order (see module doc)."""
    if split != "val":
      return super().example(split, index)
    first = min(index * self.facts_per_seq, self.num_facts)
    inputs, targets = self.pack(np.arange(first, min(first + self.facts_per_seq, self.num_facts)))
    return {"inputs": inputs, "targets": targets}
