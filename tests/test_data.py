"""Corpus, tokenizers, the text task and its grain pipelines."""

import numpy as np
import pytest

from memzoo.data import corpus, pipeline, tasks, tokenizers
from memzoo.errors import ConfigError


def test_shipped_corpus_and_char_vocab():
  text = corpus.read_text(None)
  assert len(text) == 1_115_394
  tok = tokenizers.CharTokenizer.from_text(text)
  assert tok.vocab_size == 65
  assert tok.decode(tok.encode("ROMEO: hi!")) == "ROMEO: hi!"
  assert tokenizers.from_json(tok.to_json()).chars == tok.chars


def test_byte_tokenizer_roundtrip():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode("héllo")
  assert ids.max() < 256 and tok.decode(ids) == "héllo"


def test_text_task_split_and_windows():
  task = tasks.build_task({"task": "text", "seq_len": 8})
  n = sum(len(t) for t in task.splits.values())
  assert len(task.splits["train"]) == int(n * 0.9)
  ex = task.examples("val")[5]
  np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])
  np.testing.assert_array_equal(ex["inputs"], task.splits["val"][5:13])


def test_train_iterator_is_seeded_and_resumable():
  task = tasks.build_task({"task": "text", "seq_len": 8})
  a = pipeline.train_iterator(task, global_batch=4, seed=3)
  b = pipeline.train_iterator(task, global_batch=4, seed=3)
  for _ in range(3):
    np.testing.assert_array_equal(next(a)["inputs"], next(b)["inputs"])
  saved = a.get_state()
  expected = [next(a)["inputs"] for _ in range(3)]
  fresh = pipeline.train_iterator(task, global_batch=4, seed=3)
  fresh.set_state(saved)
  for want in expected:
    np.testing.assert_array_equal(next(fresh)["inputs"], want)
  other = pipeline.train_iterator(task, global_batch=4, seed=4)
  assert not np.array_equal(next(other)["inputs"], expected[0])


def test_processes_read_disjoint_shares_of_the_global_batch():
  task = tasks.build_task({"task": "text", "seq_len": 8})
  full = pipeline.train_iterator(task, global_batch=4, seed=0)
  shares = [pipeline.train_iterator(task, global_batch=4, seed=0, process_index=p,
                                    process_count=2) for p in range(2)]
  rows = {tuple(r) for r in next(full)["inputs"]}
  got = [tuple(r) for s in shares for r in next(s)["inputs"]]
  assert len(got) == 4 and set(got) == rows


def test_eval_set_is_fixed():
  task = tasks.build_task({"task": "text", "seq_len": 8})
  a = pipeline.eval_dataset(task, "val", global_batch=4, num_batches=3, seed=1)
  b = pipeline.eval_dataset(task, "val", global_batch=4, num_batches=3, seed=1)
  assert len(a) == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["targets"], y["targets"])


@pytest.mark.parametrize("data, field", [
    ({"task": "nope"}, "config.data.task"),
    ({"task": "text", "seq_len": 0}, "config.data.seq_len"),
    ({"task": "text", "seq_len": 10**7}, "config.data.seq_len"),
    ({"task": "text", "val_fraction": 1.5}, "config.data.val_fraction"),
    ({"task": "text", "tokenizer": "bpe"}, "config.data.tokenizer"),
    ({"task": "text", "path": "/no/such/file.txt"}, "config.data.path"),
    ({"task": "text", "context": 64}, "config.data.context"),
])
def test_bad_data_config_names_the_field(data, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    tasks.build_task(data)


def test_empty_and_non_utf8_files(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  with pytest.raises(ConfigError, match="is empty"):
    tasks.build_task({"task": "text", "path": str(empty)})
  latin = tmp_path / "latin1.txt"
  latin.write_bytes("café ".encode("latin-1") * 100)
  with pytest.raises(ConfigError, match="not UTF-8"):
    tasks.build_task({"task": "text", "path": str(latin), "seq_len": 8})
  task = tasks.build_task({"task": "text", "path": str(latin), "seq_len": 8, "tokenizer": "byte"})
  assert task.vocab_size == 256
