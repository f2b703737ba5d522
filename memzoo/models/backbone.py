"""Decoder-only language model that stacks any mix of registered mixers.

  tokens -> embed -> N x [x + mixer(norm(x)); x + ffn(norm(x))] -> norm -> head -> logits

Layer i uses `mixers[i % len(mixers)]`, so `("attention",)` is a plain transformer and
`("gated_deltanet", "gated_deltanet", "attention")` a 2:1 hybrid.
"""

from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers import registry
from memzoo.models.layers.common import Dense, RMSNorm, param


def layer_mixers(model_cfg: Mapping[str, Any]) -> list[str]:
  """The mixer name of every layer (the config's tuple, repeated to `num_layers`)."""
  names = model_cfg["mixers"]
  names = (names,) if isinstance(names, str) else tuple(names)
  return [names[i % len(names)] for i in range(model_cfg["num_layers"])]


class Block(nnx.Module):
  """Pre-norm residual block: a sequence mixer then a feed-forward layer."""

  def __init__(self, model_cfg: Mapping[str, Any], mixer: str, ffn: str, *, rngs: nnx.Rngs):
    d = model_cfg["d_model"]
    self.mixer_norm = RMSNorm(d, rngs=rngs)
    self.mixer = registry.build("mixer", mixer, model_cfg, rngs=rngs)
    self.ffn_norm = RMSNorm(d, rngs=rngs)
    self.ffn = registry.build("ffn", ffn, model_cfg, rngs=rngs)

  def __call__(self, x, *, segment_ids=None):
    x = x + self.mixer(self.mixer_norm(x), segment_ids=segment_ids)
    return x + self.ffn(self.ffn_norm(x))

  def prefill(self, x, state):
    y, state = self.mixer.prefill(self.mixer_norm(x), state)
    x = x + y
    return x + self.ffn(self.ffn_norm(x)), state


class LanguageModel(nnx.Module):
  """Token-level LM. Fields read from `model_cfg`: vocab_size, d_model, num_layers, mixers, ffn,
  tie_embeddings, dtype, param_dtype, plus whatever the chosen layers take (see registry.build)."""

  def __init__(self, model_cfg: Mapping[str, Any], *, rngs: nnx.Rngs):
    vocab, d = model_cfg["vocab_size"], model_cfg["d_model"]
    param_dtype = jnp.dtype(model_cfg.get("param_dtype", "float32"))
    self.dtype = jnp.dtype(model_cfg.get("dtype", "float32"))
    self.embed = param(rngs, nnx.initializers.normal(0.02), (vocab, d), ("vocab", "embed"),
                       param_dtype)
    ffn = model_cfg.get("ffn", "swiglu")
    self.blocks = nnx.List([Block(model_cfg, name, ffn, rngs=rngs)
                            for name in layer_mixers(model_cfg)])
    self.final_norm = RMSNorm(d, rngs=rngs)
    self.head = (None if model_cfg.get("tie_embeddings", True) else
                 Dense(d, vocab, axes=("embed", "vocab"), dtype=self.dtype,
                       param_dtype=param_dtype, rngs=rngs))

  def _embed(self, tokens):
    return jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)

  def _logits(self, x):
    x = self.final_norm(x)
    if self.head is not None:
      return self.head(x).astype(jnp.float32)
    return jnp.einsum("...d,vd->...v", x, self.embed[...].astype(x.dtype),
                      preferred_element_type=jnp.float32)

  def __call__(self, tokens, *, segment_ids=None):
    """`tokens [B, T] int -> logits [B, T, vocab] float32`."""
    x = self._embed(tokens)
    for block in self.blocks:
      x = block(x, segment_ids=segment_ids)
    return self._logits(x)

  def init_state(self, batch_size: int, max_len: int) -> list:
    """Decode state: one entry per layer (see Mixer.init_state)."""
    return [block.mixer.init_state(batch_size, max_len) for block in self.blocks]

  def prefill(self, tokens, state):
    """`tokens [B, T]` continuing from `state` -> `(logits [B, T, vocab], state)`."""
    x = self._embed(tokens)
    new_state = []
    for block, s in zip(self.blocks, state):
      x, s = block.prefill(x, s)
      new_state.append(s)
    return self._logits(x), new_state

  def step(self, token, state):
    """One token per sequence, `[B] -> (logits [B, vocab], state)`."""
    logits, state = self.prefill(token[:, None], state)
    return logits[:, 0], state
