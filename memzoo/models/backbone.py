"""Decoder-only language model that stacks any mix of registered mixers.

  tokens -> embed -> N x [x + mixer(norm(x)); x + ffn(norm(x))] -> norm -> head -> logits

Layer i uses `mixers[i % len(mixers)]`, so `("attention",)` is a plain transformer and
`("gated_deltanet", "gated_deltanet", "attention")` a 2:1 hybrid.

Memory layers (see memzoo/models/layers/{pkm,peer,engram}.py):
  memory_layers = (i, ...)    these blocks use the feed-forward `memory_ffn` ("pkm" | "peer")
  memory_share_values = True  one pkm value table, owned by the model, read by all memory layers
  engram_layers = (i, ...)    these blocks first add `engram(x, tokens)` to the residual stream

Memory knobs: `remat` recomputes each block's activations in the backward pass; `scan_layers`
builds one period of the mixer pattern, vmapped over `num_layers / len(mixers)` copies and run by
`nnx.scan`, so compile time stays flat in depth (every period must then be the same: no memory or
engram layers).
"""

import dataclasses
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


def layer_indices(model_cfg: Mapping[str, Any], field: str) -> tuple[int, ...]:
  """The sorted layer indices listed in `model_cfg[field]` (e.g. "memory_layers"), checked."""
  layers, n = tuple(model_cfg.get(field) or ()), model_cfg["num_layers"]
  bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n)]
  if bad:
    raise ConfigError(f"config.model.{field}", f"{bad} are not layer indices",
                      f"use integers in [0, num_layers={n})")
  return tuple(sorted(set(layers)))


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """What block i is made of."""
  mixer: str
  ffn: str
  engram_index: int | None = None  # the layer index (it seeds the hash) when it has an Engram
  shared_values: bool = False  # its ffn reads the model's shared memory table


def layer_specs(model_cfg: Mapping[str, Any]) -> list[LayerSpec]:
  ffn, memory_ffn = model_cfg.get("ffn", "swiglu"), model_cfg.get("memory_ffn", "pkm")
  memory = layer_indices(model_cfg, "memory_layers")
  engram = layer_indices(model_cfg, "engram_layers")
  share = bool(model_cfg.get("memory_share_values", False))
  return [LayerSpec(mixer, memory_ffn if i in memory else ffn, i if i in engram else None,
                    share and i in memory)
          for i, mixer in enumerate(layer_mixers(model_cfg))]


def has_memory_tables(model_cfg: Mapping[str, Any]) -> bool:
  """Whether some block reads a memory table (pkm / peer feed-forward or Engram) and so sows
  its `memory_reads` for the eval's usage statistics."""
  return any(spec.ffn in ("pkm", "peer") or spec.engram_index is not None
             for spec in layer_specs(model_cfg))


class Block(nnx.Module):
  """Pre-norm residual block: an optional Engram memory, a sequence mixer, a feed-forward layer.

  `values` is the shared memory table, passed to memory feed-forward layers built with
  memory_share_values.
  """

  def __init__(self, model_cfg: Mapping[str, Any], spec: LayerSpec, *, rngs: nnx.Rngs):
    d = model_cfg["d_model"]
    self.engram = (None if spec.engram_index is None else
                   registry.build("input_branch", "engram", model_cfg,
                                  layer_index=spec.engram_index, rngs=rngs))
    self.mixer_norm = RMSNorm(d, rngs=rngs)
    self.mixer = registry.build("mixer", spec.mixer, model_cfg, rngs=rngs)
    self.ffn_norm = RMSNorm(d, rngs=rngs)
    self.ffn = registry.build("ffn", spec.ffn, model_cfg, rngs=rngs)

  def _ffn(self, x, values):
    h = self.ffn_norm(x)
    return self.ffn(h) if values is None else self.ffn(h, values=values)

  def __call__(self, x, tokens, *, segment_ids=None, values=None):
    """`(x, aux_loss)`: the block's output and its mixer's auxiliary loss."""
    if self.engram is not None:
      x = x + self.engram(x, tokens, segment_ids=segment_ids)
    y, aux = self.mixer.mix_with_aux(self.mixer_norm(x), segment_ids=segment_ids)
    x = x + y
    return constrain(x + self._ffn(x, values), ACTIVATION), aux

  def flops(self, batch: int, seq_len: int, *, backward: bool = False) -> int:
    """Forward (or backward) FLOPs of the block's layers (see layers/base.py, FlopCounted)."""
    layers = [self.mixer, self.ffn] + ([] if self.engram is None else [self.engram])
    count = (lambda m: m.backward_flops(batch, seq_len)) if backward else (
        lambda m: m.flops(batch, seq_len))
    return sum(count(layer) for layer in layers)

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


class BlockGroup(nnx.Module):
  """Consecutive blocks, one per LayerSpec: the whole stack, or the unit `scan_layers` repeats."""

  def __init__(self, model_cfg, specs: list[LayerSpec], *, remat: str, rngs: nnx.Rngs):
    self.blocks = nnx.List([Block(model_cfg, spec, rngs=rngs) for spec in specs])
    self.shared_values = tuple(spec.shared_values for spec in specs)
    self.policy, self.remat = REMAT_POLICIES[remat], remat != "none"

  def __call__(self, x, tokens, *, segment_ids=None, values=None):
    """`(x, the blocks' auxiliary losses summed)`."""
    aux = jnp.zeros((), jnp.float32)
    for block, shared in zip(self.blocks, self.shared_values):
      def run(block, x, values):
        return block(x, tokens, segment_ids=segment_ids, values=values)
      if self.remat:
        run = nnx.remat(run, policy=self.policy)
      x, block_aux = run(block, x, values if shared else None)
      aux = aux + block_aux
    return x, aux

  def flops(self, batch: int, seq_len: int, *, backward: bool = False) -> int:
    return sum(block.flops(batch, seq_len, backward=backward) for block in self.blocks)

  def init_state(self, batch_size: int, max_len: int) -> list:
    return [block.init_state(batch_size, max_len) for block in self.blocks]

  def prefill(self, x, tokens, state, *, values=None):
    new_state = []
    for block, shared, s in zip(self.blocks, self.shared_values, state):
      x, s = block.prefill(x, tokens, s, values=values if shared else None)
      new_state.append(s)
    return x, new_state


class ScannedGroups(nnx.Module):
  """`count` copies of a BlockGroup with parameters stacked on a leading `layers` axis."""

  def __init__(self, model_cfg, specs: list[LayerSpec], count: int, *, remat: str,
               rngs: nnx.Rngs):
    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
      return BlockGroup(model_cfg, specs, remat=remat, rngs=rngs)
    self.groups = make(rngs)
    self.count = count

  def flops(self, batch: int, seq_len: int, *, backward: bool = False) -> int:
    return self.count * self.groups.flops(batch, seq_len, backward=backward)

  def __call__(self, x, tokens, *, segment_ids=None, values=None):
    """`(x, the auxiliary losses of every group summed)`."""
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
    def run(group, x):
      return group(x, tokens, segment_ids=segment_ids)
    x, aux = run(self.groups, x)
    return x, jnp.sum(aux)

  def init_state(self, batch_size: int, max_len: int):
    @nnx.vmap(in_axes=0, out_axes=0)
    def init(group):
      return group.init_state(batch_size, max_len)
    return init(self.groups)

  def prefill(self, x, tokens, state, *, values=None):
    @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def run(group, x, s):
      return group.prefill(x, tokens, s)
    return run(self.groups, x, state)


def _stack(model_cfg, specs: list[LayerSpec], remat: str, rngs: nnx.Rngs):
  if remat not in REMAT_POLICIES:
    raise ConfigError("config.model.remat", f"unknown policy {remat!r}",
                      f"choose one of {sorted(REMAT_POLICIES)}")
  if not model_cfg.get("scan_layers", False):
    return BlockGroup(model_cfg, specs, remat=remat, rngs=rngs)
  period = len(mixer_pattern(model_cfg))
  if len(specs) % period:
    raise ConfigError("config.model.scan_layers", f"num_layers {len(specs)} is not a multiple "
                      f"of the mixer pattern length {period}",
                      "make it a multiple, or turn scan_layers off")
  if any(spec != specs[i % period] for i, spec in enumerate(specs)):
    raise ConfigError("config.model.scan_layers", "memory_layers / engram_layers make the "
                      "layers differ", "turn scan_layers off for models with memory layers")
  return ScannedGroups(model_cfg, specs[:period], len(specs) // period, remat=remat, rngs=rngs)


class LanguageModel(nnx.Module):
  """Token-level LM. Fields read from `model_cfg`: vocab_size, d_model, num_layers, mixers, ffn,
  memory_layers, memory_ffn, memory_share_values, engram_layers, tie_embeddings, dtype,
  param_dtype, remat, scan_layers, plus whatever the chosen layers take (see registry.build)."""

  def __init__(self, model_cfg: Mapping[str, Any], *, rngs: nnx.Rngs):
    vocab, d = model_cfg["vocab_size"], model_cfg["d_model"]
    param_dtype = jnp.dtype(model_cfg.get("param_dtype", "float32"))
    self.dtype = jnp.dtype(model_cfg.get("dtype", "float32"))
    self.embed = param(rngs, nnx.initializers.normal(0.02), (vocab, d), ("vocab", "embed"),
                       param_dtype)
    specs = layer_specs(model_cfg)
    self.stack = _stack(model_cfg, specs, model_cfg.get("remat", "none"), rngs)
    self.memory_values = self._shared_values(model_cfg, specs, rngs)
    self.final_norm = RMSNorm(d, rngs=rngs)
    self.head = (None if model_cfg.get("tie_embeddings", True) else
                 Dense(d, vocab, axes=("embed", "vocab"), dtype=self.dtype,
                       param_dtype=param_dtype, rngs=rngs))

  def _shared_values(self, model_cfg, specs, rngs):
    """Memory+ (Berges et al. 2024): one value table for every memory layer. The model owns it and
    passes it to those layers at call time (they were built without a table)."""
    if not model_cfg.get("memory_share_values", False):
      return None
    field = "config.model.memory_share_values"
    sharing = [i for i, spec in enumerate(specs) if spec.shared_values]
    if not sharing:
      raise ConfigError(field, "set but memory_layers is empty", "list the memory layers")
    first = self.stack.blocks[sharing[0]].ffn
    if not hasattr(first, "new_value_table"):
      raise ConfigError(field, f"memory_ffn {type(first).__name__} has no value table to share",
                        "use memory_ffn='pkm' or set memory_share_values=False")
    return first.new_value_table(rngs)

  def _embed(self, tokens):
    return constrain(jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype), ACTIVATION)

  def _logits(self, x):
    x = self.final_norm(x)
    if self.head is not None:
      return self.head(x).astype(jnp.float32)
    return jnp.einsum("...d,vd->...v", x, self.embed[...].astype(x.dtype),
                      preferred_element_type=jnp.float32)

  def flops(self, batch: int, seq_len: int) -> int:
    """Forward FLOPs on `[batch, seq_len]` tokens: every block and the logits (the embedding
    lookup and the norms are free; see layers/base.py, FlopCounted, for the convention)."""
    return self.stack.flops(batch, seq_len) + self._logits_flops(batch * seq_len)

  def train_flops(self, batch: int, seq_len: int) -> int:
    """Forward + backward FLOPs of a training step on `[batch, seq_len]` tokens: the model FLOPs
    of MFU (recomputation not counted)."""
    return (self.flops(batch, seq_len) + self.stack.flops(batch, seq_len, backward=True)
            + 2 * self._logits_flops(batch * seq_len))

  def _logits_flops(self, tokens: int) -> int:
    vocab, d = self.embed.get_value().shape
    return 2 * tokens * d * vocab

  def __call__(self, tokens, *, segment_ids=None):
    """`tokens [B, T] int -> logits [B, T, vocab] float32`."""
    return self.logits_and_aux_loss(tokens, segment_ids=segment_ids)[0]

  def logits_and_aux_loss(self, tokens, *, segment_ids=None):
    """`(logits, aux_loss)`: the layers' auxiliary training losses summed, a float32 scalar (0
    without layers that have one; see `Mixer.mix_with_aux`)."""
    x, aux = self.stack(self._embed(tokens), tokens, segment_ids=segment_ids,
                        values=self.memory_values)
    return self._logits(x), aux

  def init_state(self, batch_size: int, max_len: int):
    """Decode state, per layer `{"mixer": Mixer.init_state(...)}` plus `"engram"` in engram layers;
    `max_len` bounds prompt + generation."""
    return self.stack.init_state(batch_size, max_len)

  def prefill(self, tokens, state):
    """`tokens [B, T]` continuing from `state` -> `(logits [B, T, vocab], state)`."""
    x, state = self.stack.prefill(self._embed(tokens), tokens, state, values=self.memory_values)
    return self._logits(x), state

  def step(self, token, state):
    """One token per sequence, `[B] -> (logits [B, vocab], state)`."""
    logits, state = self.prefill(token[:, None], state)
    return logits[:, 0], state
