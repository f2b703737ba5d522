"""Sequence-layer zoo: pure ops, NNX layers and the LM backbone."""
