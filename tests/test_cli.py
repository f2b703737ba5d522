"""The command lines end to end, in subprocesses: train, resume, sample, and one-line errors."""

import subprocess
import sys

from conftest import REPO_ROOT

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

  resumed = run("memzoo.train", f"--workdir={tmp_path}", "--config.train.steps=25",
                "--config.train.eval_every=5", *TINY)
  assert resumed.returncode == 0, resumed.stderr
  assert "trained steps 21-25" in resumed.stdout and "step     25:" in resumed.stdout

  sample = run("memzoo.train.sample", f"--workdir={tmp_path}", "--prompt=ROMEO:", "--tokens=30")
  assert sample.returncode == 0, sample.stderr
  assert sample.stdout.startswith("ROMEO:") and len(sample.stdout.rstrip("\n")) == 36


def test_user_errors_are_one_line(tmp_path):
  for args, field in [(["--config.model.d_modle=3"], "d_modle"),
                      (["--config.data.path=/no/such.txt"], "config.data.path"),
                      (["--config=/no/such_config.py"], "config")]:
    result = run("memzoo.train", f"--workdir={tmp_path}", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.stderr, lines
