"""NNX layers. Importing this package registers every built-in mixer and feed-forward layer."""

from memzoo.models.layers import (  # noqa: F401
    attention, deltanet, engram, ffn, gla, linear_attention, mom, neural_memory, peer, pkm,
    retention, titans)
from memzoo.models.layers.base import Mixer
from memzoo.models.layers.registry import build, register_ffn, register_mixer

__all__ = ["Mixer", "build", "register_ffn", "register_mixer"]
