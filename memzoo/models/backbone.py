"""Decoder-only language model that stacks any mix of registered mixers.

  tokens -> embed -> N x [x + mixer(norm(x)); x + ffn(norm(x))] -> norm -> head -> logits

Layer i uses `mixers[i % len(mixers)]`, so `("attention",)` is a plain transformer and
`("gated_deltanet", "gated_deltanet", "attention")` a 2:1 hybrid. With `scan_layers` the stack is
one period of that pattern, vmapped over `num_layers / len(mixers)` copies and run by `nnx.scan`:
compile time stays flat in depth. `remat` recomputes each block's activations in the backward pass.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.layers import registry
from memzoo.models.layers.common import Dense, RMSNorm, param
from memzoo.models.partitioning import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
ACTIVATION = ("batch", "length", None)  # logical axes of the residual stream


def mixer_pattern(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
  names = model_cfg["mixers"]
  return (names,) if isinstance(names, str) else tuple(names)


def layer_mixers(model_cfg: Mapping[str, Any]) -> list[str]:
  """The mixer name of every layer (the config's tuple, repeated to `num_layers`)."""
  names = mixer_pattern(model_cfg)
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
    return constrain(x + self.ffn(self.ffn_norm(x)), ACTIVATION)

  def prefill(self, x, state):
    y, state = self.mixer.prefill(self.mixer_norm(x), state)
    x = x + y
    return x + self.ffn(self.ffn_norm(x)), state


class BlockGroup(nnx.Module):
  """Consecutive blocks, one per mixer name: the unit that `scan_layers` repeats."""

  def __init__(self, model_cfg, mixers, ffn: str, *, remat: str, rngs: nnx.Rngs):
    self.blocks = nnx.List([Block(model_cfg, name, ffn, rngs=rngs) for name in mixers])
    self.policy = REMAT_POLICIES[remat]
    self.remat = remat != "none"

  def __call__(self, x, *, segment_ids=None):
    for block in self.blocks:
      if self.remat:
        x = nnx.remat(lambda b, x: b(x, segment_ids=segment_ids), policy=self.policy)(block, x)
      else:
        x = block(x, segment_ids=segment_ids)
    return x

  def init_state(self, batch_size: int, max_len: int) -> list:
    return [block.mixer.init_state(batch_size, max_len) for block in self.blocks]

  def prefill(self, x, state):
    new_state = []
    for block, s in zip(self.blocks, state):
      x, s = block.prefill(x, s)
      new_state.append(s)
    return x, new_state


class ScannedGroups(nnx.Module):
  """`count` copies of a BlockGroup with parameters stacked on a leading `layers` axis."""

  def __init__(self, model_cfg, mixers, ffn: str, count: int, *, remat: str, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
      return BlockGroup(model_cfg, mixers, ffn, remat=remat, rngs=rngs)
    self.groups = make(rngs)

  def __call__(self, x, *, segment_ids=None):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(group, x):
      return group(x, segment_ids=segment_ids)
    return run(self.groups, x)

  def init_state(self, batch_size: int, max_len: int):
    @nnx.vmap(in_axes=0, out_axes=0)
    def init(group):
      return group.init_state(batch_size, max_len)
    return init(self.groups)

  def prefill(self, x, state):
    @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def run(group, x, s):
      return group.prefill(x, s)
    return run(self.groups, x, state)


class LanguageModel(nnx.Module):
  """Token-level LM. Fields read from `model_cfg`: vocab_size, d_model, num_layers, mixers, ffn,
  tie_embeddings, dtype, param_dtype, remat, scan_layers, plus whatever the chosen layers take
  (see registry.build)."""

  def __init__(self, model_cfg: Mapping[str, Any], *, rngs: nnx.Rngs):
    vocab, d = model_cfg["vocab_size"], model_cfg["d_model"]
    param_dtype = jnp.dtype(model_cfg.get("param_dtype", "float32"))
    self.dtype = jnp.dtype(model_cfg.get("dtype", "float32"))
    self.embed = param(rngs, nnx.initializers.normal(0.02), (vocab, d), ("vocab", "embed"),
                       param_dtype)
    ffn, remat = model_cfg.get("ffn", "swiglu"), model_cfg.get("remat", "none")
    if remat not in REMAT_POLICIES:
      raise ConfigError("config.model.remat", f"unknown policy {remat!r}",
                        f"choose one of {sorted(REMAT_POLICIES)}")
    if model_cfg.get("scan_layers", False):
      pattern = mixer_pattern(model_cfg)
      if model_cfg["num_layers"] % len(pattern):
        raise ConfigError("config.model.scan_layers", f"num_layers {model_cfg['num_layers']} is "
                          f"not a multiple of the mixer pattern length {len(pattern)}",
                          "make it a multiple, or turn scan_layers off")
      self.stack = ScannedGroups(model_cfg, pattern, ffn, model_cfg["num_layers"] // len(pattern),
                                 remat=remat, rngs=rngs)
    else:
      self.stack = BlockGroup(model_cfg, layer_mixers(model_cfg), ffn, remat=remat, rngs=rngs)
    self.final_norm = RMSNorm(d, rngs=rngs)
    self.head = (None if model_cfg.get("tie_embeddings", True) else
                 Dense(d, vocab, axes=("embed", "vocab"), dtype=self.dtype,
                       param_dtype=param_dtype, rngs=rngs))

  def _embed(self, tokens):
    return constrain(jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype), ACTIVATION)

  def _logits(self, x):
    x = self.final_norm(x)
    if self.head is not None:
      return self.head(x).astype(jnp.float32)
    return jnp.einsum("...d,vd->...v", x, self.embed[...].astype(x.dtype),
                      preferred_element_type=jnp.float32)

  def __call__(self, tokens, *, segment_ids=None):
    """`tokens [B, T] int -> logits [B, T, vocab] float32`."""
    return self._logits(self.stack(self._embed(tokens), segment_ids=segment_ids))

  def init_state(self, batch_size: int, max_len: int):
    """Decode state of every layer (see Mixer.init_state); `max_len` bounds prompt + generation."""
    return self.stack.init_state(batch_size, max_len)

  def prefill(self, tokens, state):
    """`tokens [B, T]` continuing from `state` -> `(logits [B, T, vocab], state)`."""
    x, state = self.stack.prefill(self._embed(tokens), state)
    return self._logits(x), state

  def step(self, token, state):
    """One token per sequence, `[B] -> (logits [B, vocab], state)`."""
    logits, state = self.prefill(token[:, None], state)
    return logits[:, 0], state
