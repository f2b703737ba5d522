"""The `facts` task: layout of a hand-checked example, one value per key across splits, the val
split covering every fact once, determinism per seed, and one-line errors for bad options."""

import numpy as np
import pytest

from memzoo.data import tasks
from memzoo.data.synthetic.facts import EOS, PAD, SEP
from memzoo.errors import ConfigError

IGNORE = tasks.IGNORE


def build(**options):
  return tasks.build_task({"task": "facts", **options})


def facts_in(example):
  """`{(k1, k2): (v1, v2)}` read off an example's inputs, checking each fact's scored targets."""
  x, y = example["inputs"], example["targets"]
  found = {}
  for start in np.flatnonzero(x == SEP) - 2:
    k1, k2, sep, v1, v2, eos = x[start:start + 6]
    assert (sep, eos) == (SEP, EOS)
    assert list(y[start:start + 6]) == [IGNORE, IGNORE, v1, v2, IGNORE, IGNORE]
    found[(k1, k2)] = (v1, v2)
  return found


def test_hand_checked_layout():
  # seq_len 14 -> 2 facts (12 tokens) and 2 PAD; K = 4 keys at ids 3..6, V = 3 values at 7..9.
  task = build(num_facts=10, key_vocab=4, value_vocab=3, seq_len=14, num_val_examples=6)
  assert task.vocab_size == 10 and task.facts_per_seq == 2
  ex = task.examples("val")[1]  # facts 2 and 3
  (a1, a2), (b1, b2) = task.keys[2:4]
  (c1, c2), (d1, d2) = task.values[2:4]
  assert list(ex["inputs"]) == [a1, a2, SEP, c1, c2, EOS, b1, b2, SEP, d1, d2, EOS, PAD, PAD]
  i = IGNORE
  assert list(ex["targets"]) == [i, i, c1, c2, i, i, i, i, d1, d2, i, i, i, i]
  assert ex["inputs"].dtype == ex["targets"].dtype == np.int32
  assert task.keys.min() >= 3 and task.keys.max() <= 6
  assert task.values.min() >= 7 and task.values.max() <= 9
  # Example 4 holds the last 2 facts; example 5 lies past the fact set: all PAD, nothing scored.
  assert list(facts_in(task.examples("val")[4])) == [tuple(k) for k in task.keys[8:]]
  assert not np.any(task.examples("val")[5]["inputs"])
  assert np.all(task.examples("val")[5]["targets"] == IGNORE)


def test_keys_unique_values_consistent_and_val_covers_each_fact_once():
  task = build(num_facts=300, key_vocab=20, value_vocab=16, seq_len=40)  # 6 facts per sequence
  fact_set = {tuple(k): tuple(v) for k, v in zip(task.keys, task.values)}
  assert len(fact_set) == 300  # distinct keys
  val = [facts_in(task.examples("val")[i]) for i in range(task.num_examples["val"])]
  assert task.num_examples["val"] == 50 and sum(len(f) for f in val) == 300
  assert {k: v for f in val for k, v in f.items()} == fact_set
  for i in range(50):
    train = facts_in(task.examples("train")[i])
    assert len(train) == 6 and all(fact_set[k] == v for k, v in train.items())


def test_fact_set_is_a_function_of_the_seed_and_train_examples_of_the_index():
  a, b, c = (build(num_facts=64, key_vocab=16, seed=s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a.keys, b.keys)
  np.testing.assert_array_equal(a.values, b.values)
  assert not np.array_equal(a.keys, c.keys)
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(a.examples("train")[3][key], b.examples("train")[3][key])
  assert not np.array_equal(a.examples("train")[3]["inputs"], a.examples("train")[4]["inputs"])


def test_a_large_key_space_is_sampled_without_materialising_it():
  task = build(num_facts=1000, key_vocab=2 ** 20, value_vocab=8)  # 2^40 key pairs
  assert len({tuple(k) for k in task.keys}) == 1000
  assert task.vocab_size == 3 + 2 ** 20 + 8


@pytest.mark.parametrize("options, field", [
    (dict(seq_len=5), "config.data.seq_len"),
    (dict(key_vocab=0), "config.data.key_vocab"),
    (dict(value_vocab=1.5), "config.data.value_vocab"),
    (dict(num_facts=17, key_vocab=4), "config.data.num_facts"),
    (dict(num_facts=7, seq_len=48), "config.data.num_facts"),
    (dict(num_facts=100, seq_len=48, num_val_examples=12), "config.data.num_val_examples"),
    (dict(num_train_examples=0), "config.data.num_train_examples"),
    (dict(fact_count=3), "config.data.fact_count"),
])
def test_bad_options_name_the_field(options, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    build(**options)
