"""Pallas kernels of memzoo's ops for GPU / TPU. Each is checked against its JAX op in Pallas
interpret mode on CPU (tests/test_pallas.py); the JAX ops stay the default."""
