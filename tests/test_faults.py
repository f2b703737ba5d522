"""Damaged checkpoints, a workdir of another model, non-finite steps, and what a run directory is
made of: end to end through the real CLI (subprocesses, tiny model), plus the checkpointer's
fallback in-process on a small pytree."""

import json
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from faults import (STEPS, assert_bitwise_equal, checkpoint_steps, logged, one_line, saved_state,
                    shared_env, shared_reference, train)

from memzoo.errors import UserError
from memzoo.train.checkpoint import Checkpointer, DifferentModel


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return shared_env(tmp_path_factory)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A run trained to the end (shared with test_resume): (workdir, final train state)."""
  workdir, _, state = shared_reference(tmp_path_factory)
  return workdir, state


def _largest_chunk(step_dir):
  chunks = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(chunks, key=lambda p: p.stat().st_size)


def flip_a_bit(step_dir, position=None):
  """Flips one bit of the largest array chunk file (in the middle unless `position` is given)."""
  target = _largest_chunk(step_dir)
  content = bytearray(target.read_bytes())
  content[len(content) // 2 if position is None else position] ^= 0x10
  target.write_bytes(bytes(content))


def flip_a_silent_bit(workdir, step):
  """Flips the first bit, from the middle of the largest chunk file on, that orbax alone reads
  back without an error but with changed values (where the bit lands in a zstd frame's header,
  orbax fails on its own; the file layout varies from run to run), so that only the digest can
  tell."""
  target = _largest_chunk(workdir / "checkpoints" / str(step))
  original, clean = target.read_bytes(), saved_state(workdir, step)
  for position in range(len(original) // 2, len(original), 97):
    target.write_bytes(original)
    flip_a_bit(workdir / "checkpoints" / str(step), position)
    try:
      read = saved_state(workdir, step)
    except Exception:  # orbax fails on its own here: not silent, try the next position
      continue
    if any(read[name].tobytes() != clean[name].tobytes() for name in clean):
      return
  raise AssertionError(f"no bit of {target} changes the arrays silently")


def test_corrupt_latest_checkpoint_is_moved_aside_and_resume_is_exact(env, finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  previous, latest = checkpoint_steps(workdir)
  flip_a_silent_bit(workdir, latest)

  result = train(workdir, env)
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if line.startswith("memzoo: warning")]
  assert len(warnings) == 1 and f"checkpoints/{latest} cannot be read" in warnings[0], warnings
  assert "differ from their digest" in warnings[0]
  assert f"resuming from step {previous}" in warnings[0]
  assert f"trained steps {previous + 1}-{STEPS}" in result.stdout
  assert (workdir / "broken_checkpoints" / str(latest) / "state").is_dir()  # kept, not deleted
  assert checkpoint_steps(workdir) == [previous, latest]  # the good step outlived max_to_keep
  assert_bitwise_equal(saved_state(workdir), finished[1])


def test_workdir_of_another_model_is_refused_then_overwrite_starts_afresh(env, finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}

  refused = train(workdir, env, "--config.model.d_model=64")
  assert refused.returncode == 2
  line = one_line(refused.stderr)
  assert "different model" in line and "config.model.d_model: 32 -> 64" in line, line
  assert "--overwrite" in line
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before

  fresh = train(workdir, env, "--overwrite")
  assert fresh.returncode == 0, fresh.stderr
  assert f"trained steps 1-{STEPS}" in fresh.stdout
  moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
  assert len(moved) == 1 and checkpoint_steps(moved[0]) == checkpoint_steps(finished[0])
  assert_bitwise_equal(saved_state(workdir), finished[1])


def test_run_directory_holds_json_and_arrays_only_no_pickles(finished):
  """Every file is JSON, JSON lines, orbax's binary array stores (OCDBT manifests, zstd-compressed
  zarr chunks) or tensorboard events (protobuf); none is a pickle."""
  pickle_start, zstd, ocdbt = b"\x80", b"\x28\xb5\x2f\xfd", b"\x0c\xdb"
  for path in finished[0].rglob("*"):
    if not path.is_file():
      continue
    data = path.read_bytes()
    assert not data.startswith(pickle_start) and b"pickle" not in data.lower(), path
    if "tfevents" in path.name:
      continue
    if path.name == "metrics.jsonl":
      [json.loads(line) for line in data.decode().splitlines()]
    elif path.name.endswith(".txt") or path.name == "commit_success.txt":
      data.decode("utf-8")
    elif data.startswith(ocdbt) or zstd in data[:16]:
      continue
    else:
      json.loads(data)  # metadata, shardings, iterator position, digest, config, tokenizer
  config = json.loads((finished[0] / "config.json").read_text())
  assert config["model"]["d_model"] == 32 and config["train"]["steps"] == STEPS


def test_nonfinite_steps_are_skipped_then_stop_with_a_checkpoint(env, tmp_path):
  """Step 3 alone is NaN: skipped, training goes on. Steps 7-9 are NaN with max_bad_steps=3: the
  run stops (exit 3, one line) with a checkpoint; skipped steps leave the state unchanged."""
  workdir = tmp_path / "run"
  result = train(workdir, env, "--config.train.debug_nan_steps=(3,7,8,9)",
                 "--config.train.max_bad_steps=3", "--config.train.checkpoint_every=1",
                 "--config.train.keep_checkpoints=100")
  assert result.returncode == 3, result.stderr
  line = one_line(result.stderr)
  assert "diverged" in line and "config.train.max_bad_steps=3" in line and "up to step 9" in line

  log = logged(workdir)
  assert [s for s in log if not np.isfinite(log[s]["loss"])] == [3, 7, 8, 9]
  assert [log[s]["bad_steps"] for s in (2, 3, 4, 7, 8, 9)] == [0, 1, 0, 1, 2, 3]
  assert [log[s]["skipped_steps"] for s in (2, 3, 9)] == [0, 1, 4]
  stopped = checkpoint_steps(workdir)[-1]
  assert stopped >= 9 and max(log) == stopped  # stopped within a step of the detection

  def params_and_optimizer(step):
    return {k: v for k, v in saved_state(workdir, step).items() if "params" in k or "opt" in k}
  assert_bitwise_equal(params_and_optimizer(3), params_and_optimizer(2))
  assert_bitwise_equal(params_and_optimizer(9), params_and_optimizer(6))
  assert not np.array_equal(saved_state(workdir, 4)["['params']['embed']"],
                            saved_state(workdir, 3)["['params']['embed']"])
  assert saved_state(workdir, 9)["['step']"] == 9


# The checkpointer alone, on a small pytree and a grain iterator (no model, no compile).

def _iterator():
  return iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())


def _state(i):
  """Incompressible arrays, so that the largest chunk file holds `w`'s values."""
  return {"w": jax.random.normal(jax.random.key(i), (64, 64)),
          "h": jnp.full((5,), i, jnp.bfloat16), "step": jnp.asarray(i, jnp.int32)}


def _target():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      _state(0))


@pytest.fixture
def three_steps(tmp_path):
  """Checkpoints of steps 1, 2, 3 (the iterator advanced once per step) under tmp_path."""
  data, checkpoints = _iterator(), Checkpointer(tmp_path / "checkpoints", keep=3)
  for step in (1, 2, 3):
    next(data)
    checkpoints.save(step, _state(step), data)
  checkpoints.close()
  return tmp_path


def _damage(step_dir, how):
  if how == "truncated chunk":
    chunk = max((p for p in step_dir.rglob("*") if p.parent.name == "d"),
                key=lambda p: p.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
  elif how == "flipped bit":
    flip_a_bit(step_dir)
  elif how == "garbled metadata":
    (step_dir / "state" / "_METADATA").write_text("{not json")
  elif how == "missing iterator state":
    (step_dir / "data" / "process_0-of-1.json").unlink()
  elif how == "edited iterator position":
    (step_dir / "data" / "process_0-of-1.json").write_text('{"next_index": 5}')
  elif how == "half-deleted":
    shutil.rmtree(step_dir / "state")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads
@pytest.mark.parametrize("how", ["truncated chunk", "flipped bit", "garbled metadata",
                                 "missing iterator state", "edited iterator position",
                                 "half-deleted"])
def test_damaged_latest_step_falls_back_and_is_kept(three_steps, how, capsys):
  _damage(three_steps / "checkpoints" / "3", how)
  checkpoints, data = Checkpointer(three_steps / "checkpoints", keep=3), _iterator()
  step, state = checkpoints.restore_latest(_target(), data)
  assert step == 2 and int(state["step"]) == 2
  np.testing.assert_array_equal(state["w"], _state(2)["w"])
  np.testing.assert_array_equal(next(data), [4, 5])  # the iterator is where step 2 left it
  warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("memzoo: warning")]
  assert len(warnings) == 1 and "checkpoints/3 cannot be read" in warnings[0], warnings
  assert (three_steps / "broken_checkpoints" / "3").is_dir()
  # New saves rotate the good steps out only once newer good ones exist.
  for step in (3, 4, 5):
    checkpoints.save(step, _state(step), data)
  checkpoints.wait()
  assert checkpoints.manager.all_steps() == [3, 4, 5]
  checkpoints.close()


def test_no_readable_step_is_an_error_and_nothing_is_moved(three_steps):
  for step in (1, 2, 3):
    _damage(three_steps / "checkpoints" / str(step), "garbled metadata")
  checkpoints = Checkpointer(three_steps / "checkpoints", keep=3)
  with pytest.raises(UserError, match="no checkpoint .* can be read .* --overwrite"):
    checkpoints.restore_latest(_target(), _iterator())
  assert checkpoint_steps(three_steps) == [1, 2, 3]
  assert not (three_steps / "broken_checkpoints").exists()


def test_a_step_of_another_model_is_not_mistaken_for_damage(three_steps):
  target = dict(_target(), w=jax.ShapeDtypeStruct((16, 8), jnp.float32))
  with pytest.raises(DifferentModel, match=r"w is float32\[64, 64\] there, float32\[16, 8\]"):
    Checkpointer(three_steps / "checkpoints", keep=3).restore_latest(target, _iterator())
  assert checkpoint_steps(three_steps) == [1, 2, 3]
