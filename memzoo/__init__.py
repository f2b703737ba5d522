"""memzoo: a JAX/Flax NNX zoo of sequence layers with memory, and a sharded LM trainer."""

__version__ = "0.1.0"
