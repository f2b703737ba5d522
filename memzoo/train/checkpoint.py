"""Orbax checkpoints of the train state and the grain iterator, saved asynchronously.

Layout: `<workdir>/checkpoints/<step>/{state,data,digest}`. Orbax writes a step into a temporary
directory and renames it when complete, so a crash, even `kill -9`, never leaves a half-written
step under a step's name; temporaries left by a crash are removed at start-up. Formats: the arrays
in OCDBT / zarr (zstd-compressed chunks), their tree, shapes and shardings as JSON, the data
iterator's position as JSON (`data/process_<i>-of-<n>.json`), and `digest` (JSON): a checksum of
every array and the iterator position, because orbax reads a flipped bit in an array's chunk back
silently. Nothing is pickled.

`restore_latest` walks from the newest step down. A step that cannot be read or fails its digest
(truncated, corrupted, half-deleted) while an older one is fine is moved to
`<workdir>/broken_checkpoints/` with a warning: never deleted, and no longer counted by `keep`, so
it cannot push a good step out. A step whose arrays do not match the model is a `DifferentModel`
error (another run's checkpoint), not corruption; if no step can be read, that is an error too and
nothing is moved.
"""

import sys
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from memzoo.errors import UserError


class DifferentModel(UserError):
  """The checkpoint's arrays (names, shapes, dtypes) differ from those of the model to resume."""


def _one_line(error: Exception, limit: int = 200) -> str:
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit] + "..."


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def array_specs(tree) -> dict[str, tuple]:
  """`{"params.embed": (shape, dtype), ...}` for the arrays (or array metadata) of a pytree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves}


def first_difference(saved: dict, wanted: dict) -> str | None:
  """A description of the first array (parameters first) that differs between two `array_specs`,
  or None."""
  for name in sorted(saved.keys() | wanted.keys(), key=lambda n: (not n.startswith("params"), n)):
    if name not in wanted:
      return f"it has an array {name} this model lacks"
    if name not in saved:
      return f"it lacks the array {name} of this model"
    if saved[name] != wanted[name]:
      (s_shape, s_dtype), (w_shape, w_dtype) = saved[name], wanted[name]
      return f"{name} is {s_dtype}{list(s_shape)} there, {w_dtype}{list(w_shape)} here"
  return None


def _checksum(x: jax.Array) -> jax.Array:
  """uint32 sum of the array's bits, each element weighted by an odd number that depends on its
  position: any single flipped bit changes it. Elementwise + one reduction (sharding-friendly)."""
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  bits = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(x, unsigned)
  bits = bits.astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)
  for axis, size in enumerate(bits.shape):
    index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
  weight = (index * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(0x9E3779B1)
  return jnp.sum(bits * weight, dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: [_checksum(x) for x in jax.tree.leaves(tree)])


def array_digests(tree) -> dict[str, str]:
  """`{"params.embed": "1f2e3d4c", ...}`: the `_checksum` of every array, in hex."""
  values = jax.device_get(_checksums(tree))
  return {name: f"{int(v):08x}" for name, v in zip(array_specs(tree), values)}


class CorruptCheckpoint(Exception):
  """A checkpoint whose arrays or iterator position differ from the digest saved with them."""


class Checkpointer:
  """Saves / restores `{"state": TrainState, "data": grain iterator, "digest": their checksums}`
  under `directory`, keeping the newest `keep` steps."""

  def __init__(self, directory: Path, keep: int, read_only: bool = False):
    """`read_only` (e.g. sampling from a run that may still be training): never call `save`; it
    also leaves temporaries alone, which a live run may be writing (orbax's own read_only option
    does the same but warns)."""
    self.directory = Path(directory).absolute()
    self.broken_directory = self.directory.parent / "broken_checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "digest": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator) -> bool:
    """Starts an async save (returns once the arrays are copied off the devices; the iterator's
    position is read before returning). False, and nothing done, if `step` is already saved."""
    if step in self.manager.all_steps():
      return False
    digest = {"arrays": array_digests(state), "data": data_iterator.get_state()}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        digest=ocp.args.JsonSave(digest)), force=True)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """The state at `step` laid out as `abstract_state` (shapes + shardings), checked against its
    digest; also rewinds `data_iterator` in place when given."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "digest": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    state, digest = restored["state"], restored["digest"]
    sums, saved = array_digests(state), digest["arrays"]
    wrong = sorted(k for k in sums.keys() | saved.keys() if sums.get(k) != saved.get(k))
    if wrong:
      raise CorruptCheckpoint(f"the arrays {wrong[:3]} differ from their digest")
    if data_iterator is not None and data_iterator.get_state() != digest["data"]:
      raise CorruptCheckpoint("the data iterator position differs from its digest")
    return state

  def saved_arrays(self, step: int) -> dict[str, tuple]:
    """`array_specs` of the state saved at `step`, read from its metadata."""
    return array_specs(self.manager.item_metadata(step)["state"])

  def restore_latest(self, abstract_state, data_iterator) -> tuple[int | None, object]:
    """`(step, state)` from the newest readable step (the iterator rewound to match), moving
    unreadable newer steps aside; `(None, None)` when there is no checkpoint."""
    wanted = array_specs(abstract_state)
    broken = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self.saved_arrays(step)
      except Exception as e:  # unreadable metadata: a damaged step
        broken.append((step, e))
        continue
      difference = first_difference(saved, wanted)
      if difference is not None:
        raise DifferentModel(f"checkpoint {step}: {difference}")
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # truncated or corrupted arrays or iterator state
        broken.append((step, e))
        continue
      for bad_step, error in broken:
        self._move_aside(bad_step, error, step)
      return step, state
    if broken:
      step, error = broken[0]
      raise UserError(f"--workdir: no checkpoint in {self.directory} can be read (step {step}: "
                      f"{_one_line(error)}); pass --overwrite to move the run aside and start "
                      "afresh")
    return None, None

  def _move_aside(self, step: int, error: Exception, fallback: int) -> None:
    """Moves an unreadable step out of the manager's sight (never deletes it)."""
    source = self.directory / str(step)
    target = self.broken_directory / str(step)
    suffix = 1
    while target.exists():
      target, suffix = self.broken_directory / f"{step}.{suffix}", suffix + 1
    if jax.process_index() == 0:
      self.broken_directory.mkdir(parents=True, exist_ok=True)
      source.rename(target)
      print(f"memzoo: warning: checkpoint {source} cannot be read ({_one_line(error)}); moved it "
            f"to {target} and resuming from step {fallback}", file=sys.stderr, flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"memzoo: moved checkpoint {step} aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
