"""Decoder-only language model that stacks any mix of registered mixers.

  tokens -> embed -> N x [x + mixer(norm(x)); x + ffn(norm(x))] -> norm -> head -> logits

Layer i uses `mixers[i % len(mixers)]`, so `("attention",)` is a plain transformer and
`("gated_deltanet", "gated_deltanet", "attention")` a 2:1 hybrid.

Memory layers (see memzoo/models/layers/{pkm,peer,engram}.py):
  memory_layers = (i, ...)    these blocks use the feed-forward `memory_ffn` ("pkm" | "peer")
  memory_share_values = True  one pkm value table, owned by the model, read by all memory layers
  engram_layers = (i, ...)    these blocks first add `engram(x, tokens)` to the residual stream
"""

from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.layers import registry
from memzoo.models.layers.common import Dense, RMSNorm, param
from memzoo.models.layers.engram import Engram


def layer_mixers(model_cfg: Mapping[str, Any]) -> list[str]:
  """The mixer name of every layer (the config's tuple, repeated to `num_layers`)."""
  names = model_cfg["mixers"]
  names = (names,) if isinstance(names, str) else tuple(names)
  return [names[i % len(names)] for i in range(model_cfg["num_layers"])]


def layer_indices(model_cfg: Mapping[str, Any], field: str) -> tuple[int, ...]:
  """The sorted layer indices listed in `model_cfg[field]` (e.g. "memory_layers"), checked."""
  layers, n = tuple(model_cfg.get(field) or ()), model_cfg["num_layers"]
  bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n)]
  if bad:
    raise ConfigError(f"config.model.{field}", f"{bad} are not layer indices",
                      f"use integers in [0, num_layers={n})")
  return tuple(sorted(set(layers)))


class Block(nnx.Module):
  """Pre-norm residual block: an optional Engram memory, a sequence mixer, a feed-forward layer.

  `engram_index` (the layer's index, which seeds its hash) adds the Engram branch. `values` is the
  shared memory table, passed to memory feed-forward layers built with memory_share_values.
  """

  def __init__(self, model_cfg: Mapping[str, Any], mixer: str, ffn: str, *,
               engram_index: int | None = None, rngs: nnx.Rngs):
    d = model_cfg["d_model"]
    self.engram = (None if engram_index is None else
                   registry.construct(Engram, "engram", model_cfg, layer_index=engram_index,
                                      rngs=rngs))
    self.mixer_norm = RMSNorm(d, rngs=rngs)
    self.mixer = registry.build("mixer", mixer, model_cfg, rngs=rngs)
    self.ffn_norm = RMSNorm(d, rngs=rngs)
    self.ffn = registry.build("ffn", ffn, model_cfg, rngs=rngs)

  def _ffn(self, x, values):
    h = self.ffn_norm(x)
    return self.ffn(h) if values is None else self.ffn(h, values=values)

  def __call__(self, x, tokens, *, segment_ids=None, values=None):
    if self.engram is not None:
      x = x + self.engram(x, tokens, segment_ids=segment_ids)
    x = x + self.mixer(self.mixer_norm(x), segment_ids=segment_ids)
    return x + self._ffn(x, values)

  def init_state(self, batch_size: int, max_len: int) -> dict:
    state = {"mixer": self.mixer.init_state(batch_size, max_len)}
    if self.engram is not None:
      state["engram"] = self.engram.init_state(batch_size)
    return state

  def prefill(self, x, tokens, state, *, values=None):
    state = dict(state)
    if self.engram is not None:
      y, state["engram"] = self.engram.prefill(x, tokens, state["engram"])
      x = x + y
    y, state["mixer"] = self.mixer.prefill(self.mixer_norm(x), state["mixer"])
    x = x + y
    return x + self._ffn(x, values), state


class LanguageModel(nnx.Module):
  """Token-level LM. Fields read from `model_cfg`: vocab_size, d_model, num_layers, mixers, ffn,
  memory_layers, memory_ffn, memory_share_values, engram_layers, tie_embeddings, dtype,
  param_dtype, plus whatever the chosen layers take (see registry.build)."""

  def __init__(self, model_cfg: Mapping[str, Any], *, rngs: nnx.Rngs):
    vocab, d = model_cfg["vocab_size"], model_cfg["d_model"]
    param_dtype = jnp.dtype(model_cfg.get("param_dtype", "float32"))
    self.dtype = jnp.dtype(model_cfg.get("dtype", "float32"))
    self.embed = param(rngs, nnx.initializers.normal(0.02), (vocab, d), ("vocab", "embed"),
                       param_dtype)
    ffn, memory_ffn = model_cfg.get("ffn", "swiglu"), model_cfg.get("memory_ffn", "pkm")
    self.memory_layers = layer_indices(model_cfg, "memory_layers")
    engram_layers = layer_indices(model_cfg, "engram_layers")
    self.blocks = nnx.List([
        Block(model_cfg, mixer, memory_ffn if i in self.memory_layers else ffn,
              engram_index=i if i in engram_layers else None, rngs=rngs)
        for i, mixer in enumerate(layer_mixers(model_cfg))])
    self.memory_values = self._shared_values(model_cfg, rngs)
    self.final_norm = RMSNorm(d, rngs=rngs)
    self.head = (None if model_cfg.get("tie_embeddings", True) else
                 Dense(d, vocab, axes=("embed", "vocab"), dtype=self.dtype,
                       param_dtype=param_dtype, rngs=rngs))

  def _shared_values(self, model_cfg, rngs):
    """Memory+ (Berges et al. 2024): one value table for every memory layer. The model owns it and
    passes it to those layers at call time (they were built without a table)."""
    if not model_cfg.get("memory_share_values", False):
      return None
    field = "config.model.memory_share_values"
    if not self.memory_layers:
      raise ConfigError(field, "set but memory_layers is empty", "list the memory layers")
    first = self.blocks[self.memory_layers[0]].ffn
    if not hasattr(first, "new_value_table"):
      raise ConfigError(field, f"memory_ffn {type(first).__name__} has no value table to share",
                        "use memory_ffn='pkm' or set memory_share_values=False")
    return first.new_value_table(rngs)

  def _values(self, i: int):
    """The shared table for block i (None unless block i is a memory layer sharing a table)."""
    return self.memory_values if i in self.memory_layers else None

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
    for i, block in enumerate(self.blocks):
      x = block(x, tokens, segment_ids=segment_ids, values=self._values(i))
    return self._logits(x)

  def init_state(self, batch_size: int, max_len: int) -> list:
    """Decode state: one dict per layer, `{"mixer": Mixer.init_state(...)}` plus `"engram"` in
    engram layers."""
    return [block.init_state(batch_size, max_len) for block in self.blocks]

  def prefill(self, tokens, state):
    """`tokens [B, T]` continuing from `state` -> `(logits [B, T, vocab], state)`."""
    x = self._embed(tokens)
    new_state = []
    for i, (block, s) in enumerate(zip(self.blocks, state)):
      x, s = block.prefill(x, tokens, s, values=self._values(i))
      new_state.append(s)
    return self._logits(x), new_state

  def step(self, token, state):
    """One token per sequence, `[B] -> (logits [B, vocab], state)`."""
    logits, state = self.prefill(token[:, None], state)
    return logits[:, 0], state
