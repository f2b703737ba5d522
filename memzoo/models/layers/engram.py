"""Engram: hashed n-gram memory added to the residual stream before the mixer of chosen blocks
(`config.model.engram_layers`; DeepSeek 2026, "Conditional Memory via Scalable Lookup").

    e_t = concat over n = 2..N and heads h of E_{n,h}[hash_{n,h}(x_{t-n+1..t})]   (ops/ngram_hash)
    g_t = sigmoid(signed_sqrt(<RMSNorm(W_k e_t), RMSNorm(h_t)> / sqrt(d)))   one gate per token
    v_t = g_t W_v e_t
    y   = v + silu(ShortConv(RMSNorm(v)))

Differences from the reference demo: no tokenizer compression (token ids are hashed as given), one
residual branch (no hyper-connections), and an undilated short conv.

The tables of all heads and orders are rows of one `[rows, head_dim]` table with logical axes
`("memory", None)`, so mapping `memory -> <axis>` shards the rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memzoo.models.layers.base import FlopCounted
from memzoo.models.layers.common import (MEMORY_VALUES, Dense, RMSNorm, ShortConv, param,
                                         projection_flops, sow_reads)
from memzoo.models.layers.registry import register_input_branch
from memzoo.models.ops.memory_usage import SlotReads
from memzoo.models.ops.ngram_hash import (PAD_TOKEN, hash_multipliers, ngram_hash, primes_from,
                                          token_windows)


def _frozen(a: np.ndarray):
  """An integer array as nested tuples: hashable, so NNX keeps it in the graph definition."""
  return tuple(_frozen(v) for v in a) if np.ndim(a) else int(a)


@register_input_branch("engram")
class Engram(FlopCounted, nnx.Module):
  """Hashed n-gram embeddings gated by the hidden state.

  Args:
    d_model: model width.
    vocab_size: used only for the default table size.
    max_ngram: longest n-gram N; orders 2..N are hashed.
    ngram_heads: hash heads per order, each with its own prime-sized table.
    ngram_dim: embedding width per order (split over the heads).
    table_size: rows per head (rounded up to distinct primes); None means 5 * vocab_size.
    conv_kernel: taps of the short conv.
    hash_seed, layer_index: the hash multipliers depend on both, so layers collide differently.
  """

  def __init__(self, d_model: int, vocab_size: int, *, max_ngram: int = 3, ngram_heads: int = 8,
               ngram_dim: int = 512, table_size: int | None = None, conv_kernel: int = 4,
               hash_seed: int = 0, layer_index: int, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if max_ngram < 2:
      raise ValueError(f"max_ngram={max_ngram} must be >= 2 (bigrams are the shortest n-grams)")
    if ngram_dim % ngram_heads:
      raise ValueError(f"ngram_dim={ngram_dim} must be divisible by ngram_heads={ngram_heads}")
    # Static hash constants (part of the graph definition, never trained), one entry per order.
    self.orders = tuple(range(2, max_ngram + 1))
    self.multipliers = tuple(_frozen(hash_multipliers(n, ngram_heads, hash_seed, layer_index))
                             for n in self.orders)
    primes = primes_from(table_size or 5 * vocab_size, len(self.orders) * ngram_heads)
    offsets = np.cumsum(primes) - primes  # where each head's rows start in the one table
    self.primes = _frozen(primes.reshape(len(self.orders), ngram_heads))
    self.offsets = _frozen(offsets.reshape(len(self.orders), ngram_heads))
    self.num_rows = int(primes.sum())
    self.table = param(rngs, nnx.initializers.normal(1.0),
                       (self.num_rows, ngram_dim // ngram_heads), ("memory", None), param_dtype,
                       optimizer_group=MEMORY_VALUES)
    embed_dim = len(self.orders) * ngram_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.key = Dense(embed_dim, d_model, axes=(None, "embed"), **kw)
    self.value = Dense(embed_dim, d_model, axes=(None, "embed"), **kw)
    self.key_norm = RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)
    self.hidden_norm = RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)
    self.conv_norm = RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)
    self.conv = ShortConv(d_model, kernel_size=conv_kernel, axes=("embed",),
                          param_dtype=param_dtype, rngs=rngs)
    self.state_dtype = dtype or param_dtype

  def rows(self, tokens, *, history=None, segment_ids=None):
    """`tokens [B, T] -> (rows [B, T, orders * heads] of the table, history [B, N-1])`."""
    windows, history = token_windows(tokens, self.orders[-1], history=history,
                                     segment_ids=segment_ids)
    rows = [ngram_hash(windows[..., :n], m, p) + jnp.asarray(o, jnp.int32)
            for n, m, p, o in zip(self.orders, self.multipliers, self.primes, self.offsets)]
    return jnp.concatenate(rows, axis=-1), history

  def _forward(self, x, tokens, *, history, conv_state, segment_ids):
    rows, history = self.rows(tokens, history=history, segment_ids=segment_ids)
    sow_reads(self, SlotReads(rows, self.num_rows))
    e = jnp.take(self.table[...], rows, axis=0, mode="clip")  # [B, T, orders*heads, head_dim]
    e = e.reshape(*rows.shape[:2], -1)
    k, h = self.key_norm(self.key(e)), self.hidden_norm(x)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    s = jnp.sum(k.astype(acc) * h.astype(acc), -1, keepdims=True) / h.shape[-1] ** 0.5
    gate = jax.nn.sigmoid(jnp.sign(s) * jnp.sqrt(jnp.maximum(jnp.abs(s), 1e-6)))
    v = gate.astype(x.dtype) * self.value(e)
    conv, conv_state = self.conv(self.conv_norm(v), segment_ids=segment_ids, state=conv_state)
    return v + jax.nn.silu(conv), history, conv_state

  def __call__(self, x, tokens, *, segment_ids=None):
    """`x [B, T, d]` (the residual stream), `tokens [B, T]` -> `[B, T, d]` to add to x."""
    y, _, _ = self._forward(x, tokens, history=None, conv_state=None, segment_ids=segment_ids)
    return y

  def flops(self, batch: int, seq_len: int) -> int:
    """Key and value projections, the short conv and the gate's dot product (lookups are free)."""
    tokens = batch * seq_len
    return projection_flops(self, tokens) + 2 * tokens * self.key.out_shape[0]

  def init_state(self, batch_size: int):
    """Decode state: the last N-1 tokens and the short conv's last inputs."""
    return {"tokens": jnp.full((batch_size, self.orders[-1] - 1), PAD_TOKEN, jnp.int32),
            "conv": self.conv.init_state(batch_size, self.state_dtype)}

  def prefill(self, x, tokens, state):
    """Continues from `state` over a block `x [B, T, d]`, `tokens [B, T]` -> `(y, state)`."""
    y, history, conv_state = self._forward(x, tokens, history=state["tokens"],
                                           conv_state=state["conv"], segment_ids=None)
    return y, {"tokens": history, "conv": conv_state.astype(self.state_dtype)}
