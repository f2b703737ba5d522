"""Synthetic tasks: each generator against its hand-checked construction, determinism per seed,
disjoint split streams, constant scored counts (so token accuracy = per-example accuracy), and
one-line errors for bad options."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memzoo.data import corpus, pipeline, tasks
from memzoo.errors import ConfigError

IGNORE = tasks.IGNORE


def build(**options):
  return tasks.build_task(options)


def scored(example):
  return np.flatnonzero(example["targets"] != IGNORE)


# ---------------------------------------------------------------------------------------- mqar

def test_mqar_layout_on_a_hand_checked_example():
  # T = 4N: the query region has exactly N slots, so every slot holds a query: the queries are the
  # keys at positions 2N, 2N+2, ..., in some order, and the rest is filler 0.
  task = build(task="mqar", vocab_size=20, seq_len=12, num_kv_pairs=3, random_non_queries=False)
  ex = task.examples("train")[0]
  x, y = ex["inputs"], ex["targets"]
  keys, values = x[0:6:2], x[1:6:2]
  assert set(keys) <= set(range(1, 10)) and set(values) <= set(range(10, 20))
  assert len(set(keys)) == 3 and len(set(values)) == 3
  assert sorted(x[[6, 8, 10]]) == sorted(keys) and list(x[[7, 9, 11]]) == [0, 0, 0]
  value_of = dict(zip(keys, values))
  want = [IGNORE] * 6 + [value_of[x[6]], IGNORE, value_of[x[8]], IGNORE, value_of[x[10]], IGNORE]
  assert list(y) == want
  assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == y.shape == (12,)


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_invariants(random_non_queries):
  n, t, v = 8, 64, 100
  task = build(task="mqar", vocab_size=v, seq_len=t, num_kv_pairs=n,
               random_non_queries=random_non_queries)
  for i in range(20):
    ex = task.examples("val")[i]
    x, y = ex["inputs"], ex["targets"]
    keys, values = x[0:2 * n:2], x[1:2 * n:2]
    assert len(set(keys)) == n and len(set(values)) == n
    assert keys.min() >= 1 and keys.max() < v // 2 and values.min() >= v // 2 and values.max() < v
    queries = scored(ex)
    assert len(queries) == n and np.all(queries >= 2 * n) and np.all((queries - 2 * n) % 2 == 0)
    assert sorted(x[queries]) == sorted(keys)  # each key queried exactly once
    assert all(y[q] == dict(zip(keys, values))[x[q]] for q in queries)
    filler = np.setdiff1d(np.arange(2 * n, t), queries)
    if random_non_queries:
      assert x[filler].max() < v and x[filler].min() >= 0
    else:
      assert np.all(x[filler] == 0)
  if random_non_queries:  # the filler is random tokens over the whole vocabulary
    fill = np.concatenate([task.examples("train")[i]["inputs"][2 * n:] for i in range(50)])
    assert len(np.unique(fill)) > 50


@settings(max_examples=15, deadline=None)
@given(pairs=st.integers(1, 6), passes=st.integers(1, 2), extra_slots=st.integers(0, 6),
       extra_vocab=st.integers(1, 40), index=st.integers(0, 10**6))
def test_mqar_invariants_for_any_shape(pairs, passes, extra_slots, extra_vocab, index):
  context = 2 * pairs * passes
  t = context + 2 * (pairs + extra_slots)
  v = t + extra_vocab
  task = build(task="mqar", vocab_size=v, seq_len=t, num_kv_pairs=pairs, num_passes=passes,
               random_non_queries=False)
  ex = task.example("train", index)
  x, y = ex["inputs"], ex["targets"]
  keys, values = x[0:2 * pairs:2], x[1:2 * pairs:2]
  assert len(set(keys)) == len(set(values)) == pairs
  assert keys.min() >= 1 and keys.max() < v // 2 <= values.min() and values.max() < v
  np.testing.assert_array_equal(x[:context], np.tile(x[:2 * pairs], passes))
  queries = scored(ex)
  assert len(queries) == pairs and np.all((queries - context) % 2 == 0) and queries.min() >= context
  assert [y[q] for q in queries] == [dict(zip(keys, values))[x[q]] for q in queries]
  assert np.count_nonzero(x[context:]) == pairs  # only the queries; the filler is 0


def test_mqar_query_slots_follow_the_power_law():
  # One pair, 15 slots: slot i (1-based) is chosen with probability a*i^(a-1) / sum, a = 0.01.
  task = build(task="mqar", vocab_size=64, seq_len=32, num_kv_pairs=1, random_non_queries=False)
  count = 1500
  slots = [(scored(task.example("train", i))[0] - 2) // 2 for i in range(count)]
  freq = np.bincount(slots, minlength=15) / count
  p = 0.01 * np.arange(1, 16) ** (0.01 - 1)
  p /= p.sum()
  sigma = np.sqrt(p * (1 - p) / count)
  assert np.all(np.abs(freq - p) < 5 * sigma + 1e-9), (freq, p)
  assert freq[0] > 1.5 * freq[1] > 1.5 * freq[4]  # ~1/i: early slots are favoured


def test_mqar_num_passes_repeats_the_context():
  task = build(task="mqar", vocab_size=40, seq_len=24, num_kv_pairs=3, num_passes=2)
  x = task.examples("train")[1]["inputs"]
  np.testing.assert_array_equal(x[:6], x[6:12])
  assert np.all(scored(task.examples("train")[1]) >= 12)


# ---------------------------------------------------------------------------------------- niah

@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_niah_needle_at_depth_and_only_the_key_scored(depth):
  task = build(task="niah", seq_len=150, depth=depth, key_digits=5)
  text = corpus.read_text(None)
  ex = task.examples("train")[4]
  x, y = ex["inputs"], ex["targets"]
  decoded = task.tokenizer.decode(x)
  full = decoded + task.tokenizer.decode(y[-1:])  # the example's seq_len + 1 characters
  m = re.fullmatch(r"(.*)\nThe pass key is (\d{5})\. Remember it\. \2 is the pass key\.\n(.*)"
                   r"\nWhat is the pass key\? The pass key is (\d{5})", full, re.S)
  assert m, full
  before, key, after, answer = m.groups()
  assert answer == key
  filler = before + after
  assert len(filler) == task.filler_len and filler in text[:int(len(text) * 0.9)]
  assert len(before) == round(depth * task.filler_len)
  assert list(scored(ex)) == list(range(145, 150))
  assert task.tokenizer.decode(y[145:]) == key


def test_niah_random_depth_and_val_filler_from_the_held_out_text():
  task = build(task="niah", seq_len=200)
  text = corpus.read_text(None)
  held_out = text[int(len(text) * 0.9):]
  depths = set()
  for i in range(10):
    ex = task.examples("val")[i]
    decoded = task.tokenizer.decode(ex["inputs"])
    before, rest = decoded.split("\nThe pass key is ", 1)
    after = rest.split("is the pass key.\n", 1)[1].split("\nWhat is the pass key?")[0]
    assert before + after in held_out
    depths.add(len(before))
  assert len(depths) > 5
  assert "0" in task.tokenizer.chars and task.vocab_size == len(task.tokenizer.chars)


# ------------------------------------------------------------------------- copy and induction

def test_selective_copy_hand_checked_layout():
  v, t, m = 6, 24, 4
  task = build(task="selective_copy", vocab_size=v, seq_len=t, num_tokens=m)
  for i in range(20):
    ex = task.examples("train")[i]
    x, y = ex["inputs"], ex["targets"]
    data = x[:t - m][x[:t - m] != 0]
    assert len(data) == m and data.min() >= 1 and data.max() <= v - 2  # in [1, V-1)
    assert list(x[t - m:]) == [v - 1] * m  # the markers
    assert list(y) == [IGNORE] * (t - m) + list(data)  # copied in order at the markers


def test_induction_hand_checked_layout():
  v, t = 5, 12
  task = build(task="induction", vocab_size=v, seq_len=t)
  firsts = set()
  for i in range(50):
    ex = task.examples("train")[i]
    x, y = ex["inputs"], ex["targets"]
    triggers = np.flatnonzero(x == v - 1)
    assert len(triggers) == 2 and triggers[1] == t - 1 and triggers[0] <= t - 3
    assert list(scored(ex)) == [t - 1] and y[t - 1] == x[triggers[0] + 1] != v - 1
    firsts.add(triggers[0])
  assert firsts == set(range(t - 2))  # every allowed position occurs


# ---------------------------------------------------------------------------- shared contract

ALL = [dict(task="mqar", vocab_size=64, seq_len=32, num_kv_pairs=4),
       dict(task="niah", seq_len=128), dict(task="selective_copy", seq_len=32, num_tokens=5),
       dict(task="induction", seq_len=16)]


@pytest.mark.parametrize("options", ALL, ids=lambda o: o["task"])
def test_deterministic_per_seed_split_and_index(options):
  a, b = build(**options), build(**options)
  other_seed = build(**options, seed=1)
  for i in (0, 7):
    ex = a.examples("train")[i]
    np.testing.assert_array_equal(ex["inputs"], b.examples("train")[i]["inputs"])
    np.testing.assert_array_equal(ex["targets"], b.examples("train")[i]["targets"])
    assert not np.array_equal(ex["inputs"], other_seed.examples("train")[i]["inputs"])
    assert not np.array_equal(ex["inputs"], a.examples("val")[i]["inputs"])
  train = {a.examples("train")[i]["inputs"].tobytes() for i in range(30)}
  val = {a.examples("val")[i]["inputs"].tobytes() for i in range(30)}
  assert len(train) == 30 and not train & val


@pytest.mark.parametrize("options", ALL, ids=lambda o: o["task"])
def test_every_example_scores_the_same_count_and_batches(options):
  # With a constant count, the trainer's accuracy over scored tokens equals the mean per-example
  # accuracy that Zoology reports.
  task = build(**options, num_train_examples=40, num_val_examples=8)
  counts = {len(scored(task.examples("train")[i])) for i in range(40)}
  assert len(counts) == 1 and counts.pop() >= 1
  assert len(task.examples("val")) == 8
  batch = next(pipeline.train_iterator(task, global_batch=4, seed=0))
  assert batch["inputs"].shape == batch["targets"].shape == (4, task.seq_len)
  assert batch["inputs"].max() < task.vocab_size and batch["targets"].max() < task.vocab_size


@pytest.mark.parametrize("options, field", [
    (dict(task="mqar", seq_len=63), "config.data.seq_len"),
    (dict(task="mqar", vocab_size=64, seq_len=64), "config.data.vocab_size"),
    (dict(task="mqar", seq_len=64, num_kv_pairs=17), "config.data.num_kv_pairs"),
    (dict(task="mqar", num_kv_pairs=0), "config.data.num_kv_pairs"),
    (dict(task="mqar", power_a=0.0), "config.data.power_a"),
    (dict(task="mqar", num_train_examples=0), "config.data.num_train_examples"),
    (dict(task="niah", depth=1.5), "config.data.depth"),
    (dict(task="niah", seq_len=40), "config.data.seq_len"),
    (dict(task="niah", path="/no/such.txt"), "config.data.path"),
    (dict(task="selective_copy", seq_len=10, num_tokens=6), "config.data.num_tokens"),
    (dict(task="induction", vocab_size=2), "config.data.vocab_size"),
    (dict(task="induction", tokenizer="char"), "config.data.tokenizer"),
])
def test_bad_options_name_the_field(options, field):
  with pytest.raises(ConfigError, match=re.escape(field)):
    build(**options)

