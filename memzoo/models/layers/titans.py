"""Titans architectures (Behrouz, Zhong, Mirrokni 2025, §4): the long-term memory (layers/
neural_memory.py) combined with attention, each as one sequence mixer.

  mag  memory as a gate (§4.2):  o = gate(SW-Attn*([P; x]), M([P; x]))
  mal  memory as a layer (§4.3): o = SW-Attn*(M([P; x]))
  mac  memory as context (§4.1), per segment S of `segment_len` tokens:
         h = M_{prev}(q(S))                      retrieve with the memory of the previous segment
         y = Attn([P; h; S])                     attention inside the segment
         M <- y;  o = gate(y, M(q(y)))           write y, read after each token's own write

P are `num_persistent` learned persistent-memory tokens prepended to the sequence (§3.3): attention
sees them from every query (SW-Attn* keeps them in the window), and in MAG / MAL the memory reads
them ahead of every document. `gate(y, m) = RMSNorm(y) * sigmoid(RMSNorm(m))`, both norms with
learned scales (§4.2: "normalise the outputs using learnable vector-valued weights, followed by a
non-linearity"). Memory options (chunk_size, depth, ...) are passed as the `memory` dict.

Causality: the paper's MAC attends over [P; h; S] with h the retrieval of the whole segment; since
h_j is computed from token j, a query i may only see h_j for j <= i (as for S). The gating read
`M(q(y_i))` uses the memory after token i's own write, not after the whole segment.
"""

import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.layers.base import Mixer
from memzoo.models.layers.common import RMSNorm, param
from memzoo.models.layers.neural_memory import NeuralMemory
from memzoo.models.layers.registry import register_mixer
from memzoo.models.layers.window_attention import WindowAttention, prefix_attention
from memzoo.models.ops.attention import attention_mask
from memzoo.models.ops.chunking import chunked_scan
from memzoo.models.ops.neural_memory import MemoryState
from memzoo.models.ops.rope import apply_rope
from memzoo.models.ops.segments import segment_positions


# The memory's own options (everything but the widths and dtypes), with their defaults: the `memory`
# sub-config of MAC / MAG / MAL, e.g. `--config.model.mag.memory.chunk_size=16`.
MEMORY_OPTIONS = {name: p.default for name, p in
                  inspect.signature(NeuralMemory.__init__).parameters.items()
                  if p.kind is p.KEYWORD_ONLY and name not in ("dtype", "param_dtype", "rngs")}


def _memory_options(memory: Mapping[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(memory) - set(MEMORY_OPTIONS))
  if unknown:
    raise ConfigError(f"memory.{unknown[0]}", "not an option of the neural memory",
                      f"valid options: {', '.join(MEMORY_OPTIONS)}")
  return {**MEMORY_OPTIONS, **memory}


def _where_rows(pred, on_true: MemoryState, on_false: MemoryState) -> MemoryState:
  """Per batch row (`pred [B]`), one memory state or the other (offsets are dropped)."""
  def pick(x, y):
    return jnp.where(pred.reshape(pred.shape + (1,) * (x.ndim - 1)), x, y)
  return jax.tree.map(pick, on_true._replace(offset=None), on_false._replace(offset=None))


class MemoryGate(nnx.Module):
  """`gate(y, m) = RMSNorm(y) * sigmoid(RMSNorm(m))`."""

  def __init__(self, d_model: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)
    self.memory_norm = RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, y, m):
    return self.attn_norm(y) * jax.nn.sigmoid(self.memory_norm(m))


class _Titans(Mixer):
  """Shared parts: persistent tokens, the memory and sliding-window attention (MAC uses only the
  attention's projections, with its own segment mask)."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int | None, *, window: int,
               num_persistent: int, rope_theta: float, block_q: int,
               memory: Mapping[str, Any], dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.persistent = (param(rngs, nnx.initializers.normal(1.0), (num_persistent, d_model),
                             (None, "embed"), param_dtype) if num_persistent else None)
    self.attn = WindowAttention(d_model, num_heads, head_dim, window=window,
                                rope_theta=rope_theta, block_q=block_q, **kw)
    self.memory = NeuralMemory(d_model, num_heads, head_dim, **_memory_options(memory), **kw)
    self.dtype = dtype or param_dtype

  def prefix(self):
    """The persistent tokens `[N, d]` in the compute dtype, or None."""
    return None if self.persistent is None else self.persistent[...].astype(self.dtype)

  def step(self, x_t, state):
    y, state = self.prefill(x_t[:, None], state)
    return y[:, 0], state


@register_mixer("mag")
class MemoryAsGate(_Titans):
  """Titans MAG: sliding-window attention (persistent prefix) gated by the memory branch.

  Args: d_model, num_heads, head_dim; window: attention window; num_persistent: persistent tokens;
  rope_theta, block_q: attention options; memory: NeuralMemory options.
  """

  def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None, *,
               window: int = 512, num_persistent: int = 16, rope_theta: float = 10000.0,
               block_q: int = 256, memory: Mapping[str, Any] = MEMORY_OPTIONS, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, num_heads, head_dim, window=window, num_persistent=num_persistent,
                     rope_theta=rope_theta, block_q=block_q, memory=memory, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
    self.gate = MemoryGate(d_model, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, *, segment_ids=None):
    prefix = self.prefix()
    y = self.attn(x, prefix=prefix, segment_ids=segment_ids)
    return self.gate(y, self.memory(x, segment_ids=segment_ids, prefix=prefix))

  def init_state(self, batch_size: int, max_len: int):
    return {"attn": self.attn.init_cache(batch_size, self.dtype),
            "memory": self.memory.init_state(batch_size, max_len, prefix=self.prefix())}

  def prefill(self, x, state):
    y, attn = self.attn.prefill(x, state["attn"], prefix=self.prefix())
    m, memory = self.memory.prefill(x, state["memory"])
    return self.gate(y, m), {"attn": attn, "memory": memory}


@register_mixer("mal")
class MemoryAsLayer(_Titans):
  """Titans MAL: the memory layer, then sliding-window attention whose prefix is the memory's
  output on the persistent tokens. Arguments as MemoryAsGate."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None, *,
               window: int = 512, num_persistent: int = 16, rope_theta: float = 10000.0,
               block_q: int = 256, memory: Mapping[str, Any] = MEMORY_OPTIONS, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, num_heads, head_dim, window=window, num_persistent=num_persistent,
                     rope_theta=rope_theta, block_q=block_q, memory=memory, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, *, segment_ids=None):
    state, prefix_out = self.memory.initial_state(x.shape[0], self.prefix())
    reset = None if segment_ids is None else (state.weights, state.momentum)
    m = self.memory.run(x, state, segment_ids=segment_ids, reset_state=reset)[0]
    return self.attn(m, prefix=prefix_out, segment_ids=segment_ids)

  def init_state(self, batch_size: int, max_len: int):
    memory, prefix_out = self.memory.initial_state(batch_size, self.prefix())
    memory = memory._replace(offset=jnp.zeros((), jnp.int32))
    return {"attn": self.attn.init_cache(batch_size, self.dtype), "prefix": prefix_out,
            "memory": {"memory": memory, "conv": self.memory.conv_state(batch_size)}}

  def prefill(self, x, state):
    m, memory = self.memory.prefill(x, state["memory"])
    y, attn = self.attn.prefill(m, state["attn"], prefix=state["prefix"])
    return y, {"attn": attn, "prefix": state["prefix"], "memory": memory}


@register_mixer("mac")
class MemoryAsContext(_Titans):
  """Titans MAC (see the module docstring).

  Args: d_model, num_heads, head_dim; segment_len: attention segment (a multiple of the memory's
  chunk_size); num_persistent, rope_theta: attention options; memory: NeuralMemory options.
  """

  def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None, *,
               segment_len: int = 128, num_persistent: int = 16, rope_theta: float = 10000.0,
               memory: Mapping[str, Any] = MEMORY_OPTIONS, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    super().__init__(d_model, num_heads, head_dim, window=segment_len,
                     num_persistent=num_persistent, rope_theta=rope_theta, block_q=segment_len,
                     memory=memory, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if segment_len % self.memory.chunk_size:
      raise ValueError(f"segment_len={segment_len} must be a multiple of the memory chunk_size="
                       f"{self.memory.chunk_size}")
    self.gate = MemoryGate(d_model, param_dtype=param_dtype, rngs=rngs)
    self.segment_len = segment_len
    convs = self.memory.convs
    self.conv_width = 0 if convs is None else convs["q"].kernel_size - 1

  def _prefix_kv(self, dtype):
    prefix = self.prefix()
    if prefix is None:
      empty = jnp.zeros((0, self.attn.num_heads, self.attn.head_dim), dtype)
      return empty, empty
    return self.attn.prefix_kv(prefix)

  def __call__(self, x, *, segment_ids=None):
    b, t, _ = x.shape
    n, width = self.segment_len, self.conv_width
    memory = self.memory
    start, _ = memory.initial_state(b)
    reset = (start.weights, start.momentum)
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids
    q_x, _ = memory.features("q", x, segment_ids=segment_ids)
    prefix_k, prefix_v = self._prefix_kv(x.dtype)
    heads = memory.q_proj.out_shape

    def segment(carry, chunk, valid):
      del valid  # padding sits after every real token, which nothing real attends to
      state, window, window_seg, last_seg = carry
      xs, ids = chunk["x"], chunk["seg"]
      # A document that starts on this segment's first token starts from the initial memory.
      new_doc = ids[:, 0] != last_seg
      state = _where_rows(new_doc, start, state)._replace(offset=0)  # on a chunk boundary
      # 1. Retrieve with the memory of the previous segment (the initial one for a new document).
      h = self.memory.read(state.weights, chunk["q"], xs)
      if segment_ids is not None:
        same_doc = (ids == ids[:, :1])[..., None]
        h = jnp.where(same_doc, h, self.memory.read(start.weights, chunk["q"], xs))
      # 2. Attend over [P; h; S]: h_j and S_j are visible to queries i >= j of the same document.
      # Positions count from the segment start, or from the document start inside the segment.
      local = segment_positions(ids, b, n)
      q = apply_rope(self.attn.q_proj(xs), local, self.attn.rope_theta)
      keys = jnp.concatenate([apply_rope(self.attn.k_proj(z), local, self.attn.rope_theta)
                              for z in (h, xs)], axis=1)
      values = jnp.concatenate([self.attn.v_proj(h), self.attn.v_proj(xs)], axis=1)
      mask = attention_mask(local, jnp.concatenate([local, local], 1), causal=True, window=None,
                            q_segment_ids=ids, kv_segment_ids=jnp.concatenate([ids, ids], 1))
      y = self.attn.o_proj(prefix_attention(q, keys, values, mask, prefix_k, prefix_v))
      # 3. Write y into the memory and read it back token by token. The q/k/v convs continue over
      # the segment boundary from the last conv inputs of the previous segment.
      feats, new_window = {}, {}
      ext_seg = jnp.concatenate([window_seg, ids], axis=1)
      for name in "qkv":
        ext = jnp.concatenate([window[name], getattr(memory, f"{name}_proj")(y)], axis=1)
        new_window[name] = ext[:, ext.shape[1] - width:]
        feats[name] = memory.activate(name, ext, segment_ids=ext_seg)[0][:, width:]
      o, state = memory.write(feats, y, state, segment_ids=ids if segment_ids is not None else None,
                              reset_state=reset)
      out = self.gate(y, memory.output(o, y))
      return (state, new_window, ext_seg[:, ext_seg.shape[1] - width:], ids[:, -1]), out

    window = {name: jnp.zeros((b, width) + heads, x.dtype) for name in "qkv"}
    carry = (start._replace(offset=jnp.zeros((), jnp.int32)), window,
             jnp.full((b, width), -1, seg.dtype), jnp.full((b,), -1, seg.dtype))
    _, out = chunked_scan(segment, carry, {"x": x, "seg": seg, "q": q_x}, n)
    return out

  def init_state(self, batch_size: int, max_len: int):
    del max_len  # the cache holds one segment
    memory, _ = self.memory.initial_state(batch_size)
    cache = jnp.zeros((batch_size, 2 * self.segment_len, self.attn.num_heads, self.attn.head_dim),
                      self.dtype)
    return {"pos": jnp.zeros((), jnp.int32), "retrieval": memory.weights,
            "memory": memory._replace(offset=jnp.zeros((), jnp.int32)),
            "conv_x": self.memory.conv_state(batch_size, "q"),
            "conv_y": self.memory.conv_state(batch_size), "k": cache, "v": cache}

  def step(self, x_t, state):
    n, pos = self.segment_len, state["pos"]
    memory = self.memory
    x = x_t[:, None]
    retrieval = jax.tree.map(lambda w, r: jnp.where(pos == 0, w, r), state["memory"].weights,
                             state["retrieval"])
    q_x, conv_x = memory.features("q", x, conv_state=state["conv_x"].get("q"))
    h = self.memory.read(retrieval, q_x, x)
    position = jnp.full(x.shape[:2], pos, jnp.int32)
    rope = lambda z: apply_rope(z, position, self.attn.rope_theta)
    write = lambda cache, z, slot: jax.lax.dynamic_update_slice_in_dim(
        cache, z.astype(cache.dtype), slot, axis=1)
    k = write(write(state["k"], rope(self.attn.k_proj(h)), pos), rope(self.attn.k_proj(x)), n + pos)
    v = write(write(state["v"], self.attn.v_proj(h), pos), self.attn.v_proj(x), n + pos)
    slots = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
    mask = jnp.broadcast_to(slots <= pos, (x.shape[0], 1, 2 * n))
    prefix_k, prefix_v = self._prefix_kv(x.dtype)
    y = self.attn.o_proj(prefix_attention(rope(self.attn.q_proj(x)), k.astype(x.dtype),
                                          v.astype(x.dtype), mask, prefix_k, prefix_v))
    m, mem, conv_y = memory.run(y, state["memory"], conv_state=state["conv_y"])
    new = {"pos": (pos + 1) % n, "retrieval": retrieval, "memory": mem,
           "conv_x": {"q": conv_x} if state["conv_x"] else {}, "conv_y": conv_y, "k": k, "v": v}
    return self.gate(y, m)[:, 0], new
