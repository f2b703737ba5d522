"""Two processes x two CPU devices (jax.distributed over gloo on 127.0.0.1) train, checkpoint and
resume exactly like one process with four devices."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO_ROOT

ARGS = ["--config.data.seq_len=16", "--config.model.d_model=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.train.batch_size=8", "--config.train.steps=6",
        "--config.train.warmup_steps=2", "--config.train.log_every=1",
        "--config.train.eval_every=3", "--config.train.eval_steps=2",
        "--config.train.checkpoint_every=3"]


def launch(workdir, devices, process_id=None, port=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  args = [sys.executable, "-m", "memzoo.train", f"--workdir={workdir}", *ARGS]
  if process_id is not None:
    args += ["--config.distributed.enabled=True", "--config.distributed.num_processes=2",
             f"--config.distributed.process_id={process_id}",
             f"--config.distributed.coordinator_address=127.0.0.1:{port}"]
  return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(*procs):
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]


def train_losses(workdir):
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {(m["split"], m["step"]): m["loss"] for m in lines}


def two_processes(workdir):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  finish(*[launch(workdir, 2, process_id=i, port=port) for i in range(2)])


def test_two_processes_match_one_process_and_resume(tmp_path):
  finish(launch(tmp_path / "one", 4))
  reference = train_losses(tmp_path / "one")

  two_processes(tmp_path / "two")
  losses = train_losses(tmp_path / "two")
  assert losses.keys() == reference.keys()
  for key, value in reference.items():
    np.testing.assert_allclose(losses[key], value, rtol=1e-5, err_msg=str(key))
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["3", "6"]

  # Lose the last checkpoint: the rerun resumes from step 3 and redoes 4-6 identically.
  shutil.rmtree(tmp_path / "two" / "checkpoints" / "6")
  (tmp_path / "two" / "metrics.jsonl").unlink()
  two_processes(tmp_path / "two")
  resumed = train_losses(tmp_path / "two")
  assert min(step for _, step in resumed) == 4
  for key, value in resumed.items():
    np.testing.assert_allclose(value, reference[key], rtol=1e-5, err_msg=str(key))
