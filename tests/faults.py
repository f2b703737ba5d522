"""Helpers for the fault tests: the real CLI in subprocesses on a tiny model, and readers for what
a run leaves on disk (losses, checkpoints)."""

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from conftest import REPO_ROOT

STEPS = 25
TINY = ["--config.data.seq_len=16", "--config.model.d_model=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.train.batch_size=4",
        "--config.train.warmup_steps=2", "--config.train.log_every=1",
        "--config.train.eval_every=1000", "--config.train.eval_steps=1",
        "--config.train.checkpoint_every=4", "--config.train.keep_checkpoints=2"]


_SHARED = {}


def shared_env(tmp_path_factory) -> dict:
  """`make_env` once per test session (the test modules share its compilation cache)."""
  if "env" not in _SHARED:
    _SHARED["env"] = make_env(tmp_path_factory.mktemp("fault_env"))
  return _SHARED["env"]


def shared_reference(tmp_path_factory) -> tuple[Path, dict, dict]:
  """One uninterrupted run per test session: (workdir, losses by step, final train state)."""
  if "reference" not in _SHARED:
    workdir = tmp_path_factory.mktemp("reference")
    result = train(workdir, shared_env(tmp_path_factory))
    assert result.returncode == 0, result.stderr
    losses = {step: record["loss"] for step, record in logged(workdir).items()}
    _SHARED["reference"] = workdir, losses, saved_state(workdir)
  return _SHARED["reference"]


def make_env(root: Path) -> dict:
  """Environment for the subprocesses: a small corpus (fast to tokenize) and a JAX compilation
  cache shared by all of them (a cached executable computes exactly what a fresh one does)."""
  corpus = root / "corpus.txt"
  text = gzip.decompress((REPO_ROOT / "memzoo/data/tinyshakespeare.txt.gz").read_bytes())
  corpus.write_bytes(text[:40_000])
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
              JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              MEMZOO_TEST_CORPUS=str(corpus))


def command(workdir: Path, env: dict, *extra: str) -> list[str]:
  """The same command for every run of a test: resuming it continues the run in `workdir`."""
  return [sys.executable, "-m", "memzoo.train", f"--workdir={workdir}",
          f"--config.data.path={env['MEMZOO_TEST_CORPUS']}", f"--config.train.steps={STEPS}",
          *TINY, *extra]


def train(workdir: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir, env, *extra), env=env, cwd=REPO_ROOT, text=True,
                        capture_output=True, timeout=600)


def start(workdir: Path, env: dict, *extra: str) -> subprocess.Popen:
  return subprocess.Popen(command(workdir, env, *extra), env=env, cwd=REPO_ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def logged(workdir: Path, split: str = "train") -> dict[int, dict]:
  """`{step: record}` of the complete lines of metrics.jsonl (a torn last line is skipped)."""
  path = workdir / "metrics.jsonl"
  records = {}
  for line in path.read_text().splitlines(keepends=True) if path.is_file() else []:
    if line.endswith("\n"):
      record = json.loads(line)
      if record["split"] == split:
        records[record["step"]] = record
  return records


def wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 300) -> None:
  """Polls until metrics.jsonl logs `step` (or later); fails if the process ends first."""
  deadline = time.monotonic() + timeout
  while not logged(workdir) or max(logged(workdir)) < step:
    assert proc.poll() is None, f"run ended early:\n{proc.communicate()[1][-3000:]}"
    assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
    time.sleep(0.01)


def checkpoint_steps(workdir: Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def saved_state(workdir: Path, step: int = STEPS) -> dict[str, np.ndarray]:
  """Every array of the train state saved at `step`, by name, as numpy (read onto this process's
  one device, whatever devices the run saved from: memzoo-train splits a CPU host)."""
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  tree = checkpointer.restore(path, target)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def assert_bitwise_equal(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for name in want:
    assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
    assert got[name].tobytes() == want[name].tobytes(), f"{name} differs"


def one_line(stderr: str) -> str:
  """The single line a user error prints on stderr (and nothing else: no traceback)."""
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("memzoo: error: "), stderr[-3000:]
  return lines[0]
