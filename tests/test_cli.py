"""The command lines end to end, in subprocesses: train, resume, sample, and one-line errors."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from memzoo.train import config as config_lib
from memzoo.train import distributed
from memzoo.train.distributed import auto_cpu_devices

TINY = ["--config.data.seq_len=16", "--config.model.d_model=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.train.batch_size=4", "--config.train.eval_steps=2",
        "--config.train.warmup_steps=2", "--config.train.checkpoint_every=10"]


def run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO_ROOT, timeout=600)


def test_train_resume_and_sample(tmp_path):
  first = run("memzoo.train", f"--workdir={tmp_path}", "--config.train.steps=20",
              "--config.train.eval_every=10", *TINY)
  assert first.returncode == 0, first.stderr
  assert "step     20: train loss" in first.stdout and "trained steps 1-20" in first.stdout
  config = config_lib.base_config()
  config.train.batch_size = 4
  devices = auto_cpu_devices(config, len(os.sched_getaffinity(0)))  # one per core, dividing 4
  assert f"mesh: data={devices}," in first.stdout, first.stdout

  resumed = run("memzoo.train", f"--workdir={tmp_path}", "--config.train.steps=25",
                "--config.train.eval_every=5", *TINY)
  assert resumed.returncode == 0, resumed.stderr
  assert "trained steps 21-25" in resumed.stdout and "step     25:" in resumed.stdout

  sample = run("memzoo.train.sample", f"--workdir={tmp_path}", "--prompt=ROMEO:", "--tokens=30")
  assert sample.returncode == 0, sample.stderr
  assert sample.stdout.startswith("ROMEO:") and len(sample.stdout.rstrip("\n")) == 36


def test_compilation_cache(tmp_path):
  cache = tmp_path / "cache"
  common = ["--config.train.steps=10", "--config.train.eval_every=5",
            f"--config.train.compilation_cache_dir={cache}", *TINY]
  first = run("memzoo.train", f"--workdir={tmp_path / 'a'}", *common)
  assert first.returncode == 0, first.stderr
  compiled = set(os.listdir(cache))
  assert compiled, "the first run stored no executables"
  again = run("memzoo.train", f"--workdir={tmp_path / 'b'}", *common)
  assert again.returncode == 0, again.stderr
  assert set(os.listdir(cache)) == compiled, "the second run compiled again"


def test_user_errors_are_one_line(tmp_path):
  for args, field in [(["--config.model.d_modle=3"], "d_modle"),
                      (["--config.data.path=/no/such.txt"], "config.data.path"),
                      (["--config=/no/such_config.py"], "config"),
                      (["--config.distributed.enabled=True"], "config.distributed"),
                      (["--config.distributed.enabled=True", "--config.distributed.num_processes=2",
                        "--config.distributed.process_id=5",
                        "--config.distributed.coordinator_address=127.0.0.1:1"],
                       "process_id < num_processes")]:
    result = run("memzoo.train", f"--workdir={tmp_path}", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.stderr, lines


@pytest.mark.parametrize("overrides,cores,want", [
    ({}, 2, 2), ({}, 16, 6), ({}, 1, 1), ({"train.batch_size": 7}, 4, 1),
    ({"train.batch_size": 16}, 64, 8),  # at most MAX_AUTO_CPU_DEVICES
    ({"train.grad_accum_steps": 4}, 3, 3),  # micro-batches of 3
    ({"train.grad_accum_steps": 4}, 2, 1),
    ({"mesh.fsdp": 2}, 8, 1), ({"mesh.data": 2}, 8, 1),
    ({"distributed.enabled": True}, 8, 1), ({"mesh.cpu_devices": 5}, 2, 5),
    ({"mesh.cpu_devices": 1}, 8, 1)])
def test_cpu_devices_policy(overrides, cores, want):
  """memzoo-train splits a CPU host into one device per core that divides the batch (batch 12 by
  default), for data-parallel-only single-process meshes; `mesh.cpu_devices=n` gives n."""
  config = config_lib.base_config()
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  assert auto_cpu_devices(config, cores) == want


def test_cpu_flags(monkeypatch):
  monkeypatch.setattr(distributed, "_backends_running", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert distributed.apply_cpu_flags()
  assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                                     "--xla_cpu_experimental_ynn_fusion_type=-reduce")
  assert not distributed.apply_cpu_flags()  # once
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert not distributed.apply_cpu_flags()  # the user's choice stands
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
