"""Test setup. Multi-device tests run in subprocesses (see `run_with_devices`) because the device
count is fixed when JAX starts; this process keeps the default single CPU device."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compilation dominates the suite: XLA's cheapest pipeline (no LLVM optimisation) makes it 1.5-2x
# faster here and in the subprocesses, which inherit the variable.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# The MFU peak measured during tests (a loaded machine) must not land in the user's cache; the
# subprocesses of the tests inherit this directory, so it is measured once per session.
os.environ["MEMZOO_CACHE_DIR"] = tempfile.mkdtemp(prefix="memzoo-test-cache-")
atexit.register(shutil.rmtree, os.environ["MEMZOO_CACHE_DIR"], True)

import subprocess
import sys
from pathlib import Path

import jax
import pytest

# Start the backend now, with one device, so that in-process CLI runs cannot split this host
# (memzoo-train's `distributed.split_cpu_host` only acts before the backend starts).
jax.devices()

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_with_devices(code: str, devices: int = 8, timeout: int = 600,
                     env: dict | None = None) -> str:
  """Runs Python `code` in a fresh process that sees `devices` CPU devices; returns its stdout.

  The code should `assert` what it checks; a non-zero exit fails the calling test with stderr.
  """
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT),
              "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
  proc = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                        timeout=timeout, cwd=REPO_ROOT)
  assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc.stdout


@pytest.fixture
def on_devices():
  """`on_devices(code, devices=8)`: a multi-device check in a subprocess (see run_with_devices)."""
  return run_with_devices
