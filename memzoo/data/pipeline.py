"""Grain pipelines: seeded, sliced per process, batched; the train iterator is checkpointable."""

import grain


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"batch {global_batch} not divisible by {process_count} processes")
  return global_batch // process_count


def train_iterator(task, *, global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Endless shuffled batches of this process's share of each global batch.

  Each epoch is a fresh permutation of the training examples (grain combines the seed with the
  epoch). `get_state()` / `set_state()` (or orbax through grain.checkpoint) resume it exactly.
  """
  ds = task.examples("train").shuffle(seed).repeat()
  ds = ds[process_index::process_count]
  ds = ds.batch(_local_batch(global_batch, process_count), drop_remainder=True)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def eval_dataset(task, split: str, *, global_batch: int, num_batches: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """A fixed random sample of `num_batches` global batches of `split` (the same at every eval)."""
  ds = task.examples(split).shuffle(seed)
  ds = ds[:num_batches * global_batch][process_index::process_count]
  return ds.batch(_local_batch(global_batch, process_count), drop_remainder=True)
