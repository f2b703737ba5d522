"""Exact resume after a crash or a preemption, end to end through the real CLI (subprocesses, tiny
model, CPU): `kill -9` at random moments, then SIGTERM. A resumed run must log bitwise the losses,
and end with bitwise the train state (parameters, optimizer, counters), of one uninterrupted run of
the same command; SIGINT's handling is checked in-process."""

import json
import os
import random
import signal
import time

import pytest
from faults import (STEPS, assert_bitwise_equal, checkpoint_steps, logged, saved_state, shared_env,
                    shared_reference, start, train, wait_for_step)

from memzoo.train.preemption import StopRequests


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return shared_env(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run of the same command: (workdir, losses by step, final train state)."""
  return shared_reference(tmp_path_factory)


def assert_same_as_reference(workdir, reference):
  _, losses, state = reference
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in lines if r["split"] == "train"]
  assert train_steps == list(range(1, STEPS + 1))  # each step logged once, in order
  assert {s: r["loss"] for s, r in logged(workdir).items()} == losses
  assert_bitwise_equal(saved_state(workdir), state)


def test_kill_9_at_five_random_moments_then_resume_is_bitwise_exact(env, reference, tmp_path):
  rng = random.Random(0)
  workdir = tmp_path / "run"
  for kill in range(5):
    # A random step in the kill's window (past what earlier runs logged), then a random delay of
    # up to a few steps: the kill lands anywhere in a step, a metrics write or an async save.
    target = max(rng.randint(4 * kill + 1, 4 * kill + 4), max(logged(workdir), default=0) + 1)
    proc = start(workdir, env)
    wait_for_step(proc, workdir, target)
    delay = rng.uniform(0.0, 0.03)
    time.sleep(delay)
    proc.kill()  # SIGKILL
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    for step, record in logged(workdir).items():  # every loss logged so far is the reference's
      assert record["loss"] == reference[1][step], (kill, step)
    temporaries = [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    print(f"kill {kill}: step {target} logged + {delay * 1000:.0f} ms -> logged up to "
          f"{max(logged(workdir))}, checkpoints {checkpoint_steps(workdir)}, temporaries "
          f"{temporaries}")
  result = train(workdir, env)
  assert result.returncode == 0, result.stderr
  assert_same_as_reference(workdir, reference)
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]  # cleaned up


def test_sigterm_saves_exits_0_and_resumes_exactly(env, reference, tmp_path):
  workdir = tmp_path / "run"
  proc = start(workdir, env)
  wait_for_step(proc, workdir, 7)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  message = [line for line in stdout.splitlines() if line.startswith("memzoo: SIGTERM")]
  assert len(message) == 1, stdout
  stopped = int(message[0].split("stopped after step ")[1].split()[0])
  assert 7 <= stopped < STEPS and checkpoint_steps(workdir)[-1] == stopped, message
  assert "Traceback" not in stderr

  result = train(workdir, env)
  assert result.returncode == 0, result.stderr
  assert f"trained steps {stopped + 1}-{STEPS}" in result.stdout
  assert_same_as_reference(workdir, reference)


def test_first_sigint_requests_a_stop_second_interrupts():
  # Python's own SIGINT handler, as in a plain `memzoo-train` (test runners may install another).
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  previous = signal.getsignal(signal.SIGINT)
  with StopRequests() as stop:
    assert not stop.stop_requested(0)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # the handler runs in the main thread at the next bytecode
    assert stop.stop_requested(1) and stop.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  assert signal.getsignal(signal.SIGINT) is previous
  signal.signal(signal.SIGINT, outer)
