"""Test setup. Multi-device tests run in subprocesses (tests/multidevice.py) because the device count
is fixed when JAX starts; this process keeps the default single CPU device."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
