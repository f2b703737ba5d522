"""Building blocks shared by every layer: annotated parameters, dense maps, norms, SwiGLU, conv.

Every parameter carries *logical* axis names (`out_sharding` metadata, never applied eagerly), so a
layer can be built with or without a device mesh; `memzoo.train` maps the names onto mesh axes.
Logical names in use:

  embed     the model width d_model
  mlp       hidden width of feed-forward layers
  heads     query / value heads          kv_heads   key/value heads (GQA)
  head_dim  per-head feature width        vocab      the vocabulary
  memory    slots of a memory-layer table  layers     the stacked-layer axis (scan over layers)

`None` marks an axis that is never sharded.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.ops.conv import causal_conv1d
from memzoo.models.ops.dense import contract
from memzoo.models.ops.linear_sequence_parallel import sequence_sharded_conv1d
from memzoo.models.ops.memory_usage import SlotReads
from memzoo.models.ops.sequence_parallel import sequence_parallel_size
from memzoo.models.ops.swiglu import swiglu

Axes = tuple[str | None, ...]
Shape = int | Sequence[int]


def _tuple(shape: Shape) -> tuple[int, ...]:
  return (shape,) if isinstance(shape, int) else tuple(shape)


def param(rngs: nnx.Rngs, init, shape: Shape, axes: Axes, dtype=jnp.float32, *,
          optimizer_group: str | None = None) -> nnx.Param:
  """A parameter initialised by `init(key, shape, dtype)` and annotated with logical `axes`.

  `optimizer_group` (metadata, see `optimizer_groups`) lets the trainer give the parameter its own
  optimizer settings; untagged parameters are in `DEFAULT_GROUP`.
  """
  shape = _tuple(shape)
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  metadata = {} if optimizer_group is None else {"optimizer_group": optimizer_group}
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=tuple(axes),
                   eager_sharding=False, **metadata)


DEFAULT_GROUP = "default"
MEMORY_VALUES = "memory_values"  # sparsely read tables: product-key values, PEER experts, Engram


def optimizer_groups(params):
  """The optimizer group of every parameter, for `optax.multi_transform` labels.

  `params` is a pytree of `nnx.Variable`s, e.g. `nnx.state(model, nnx.Param)`; the result has the
  same structure with each Variable replaced by its `optimizer_group` metadata (`DEFAULT_GROUP` when
  untagged). Raw arrays carry no metadata and raise.
  """
  def group(path, leaf):
    if not isinstance(leaf, nnx.Variable):
      raise TypeError(f"optimizer_groups: leaf {jax.tree_util.keystr(path)} is a raw "
                      f"{type(leaf).__name__}; pass nnx.state(model, nnx.Param), not its values")
    return leaf.get_metadata().get("optimizer_group", DEFAULT_GROUP)
  return jax.tree_util.tree_map_with_path(group, params,
                                          is_leaf=lambda v: isinstance(v, nnx.Variable))


def fan_in_init(fan_in: int, scale: float = 1.0):
  """Truncated normal with std `scale / sqrt(fan_in)` (LeCun normal)."""
  return nnx.initializers.truncated_normal(stddev=scale / fan_in ** 0.5)


def head_width(d_model: int, factor: float, num_heads: int, name: str) -> int:
  """One head's share, `int(d_model * factor) // num_heads`, of a projection `factor` times the
  model width; a ValueError naming the option `name` when that leaves a head no width."""
  width = int(d_model * factor) // num_heads
  if width < 1:
    raise ValueError(f"{name}={factor!r} leaves each of {num_heads} heads {width} dims "
                     f"(d_model {d_model}); raise {name} to >= {num_heads / d_model:.3g}")
  return width


class Dense(nnx.Module):
  """`y = x @ W (+ b)`, contracting the trailing `in_shape` axes of x into `out_shape` axes.

  `Dense(d, (H, Dh), axes=("embed", "heads", "head_dim"))` maps `[B, T, d] -> [B, T, H, Dh]`;
  `Dense((H, Dh), d, axes=("heads", "head_dim", "embed"))` maps it back.
  """

  def __init__(self, in_shape: Shape, out_shape: Shape, *, axes: Axes, use_bias: bool = False,
               kernel_init=None, bias_init=nnx.initializers.zeros_init(), dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_shape, self.out_shape = _tuple(in_shape), _tuple(out_shape)
    kernel_init = kernel_init or fan_in_init(math.prod(self.in_shape))
    self.kernel = param(rngs, kernel_init, self.in_shape + self.out_shape, axes, param_dtype)
    self.bias = (param(rngs, bias_init, self.out_shape, axes[len(self.in_shape):], param_dtype)
                 if use_bias else None)
    self.dtype = dtype

  def flops(self, tokens: int) -> int:
    """Forward FLOPs of mapping `tokens` inputs."""
    return 2 * tokens * math.prod(self.in_shape) * math.prod(self.out_shape)

  def check_input(self, x: jnp.ndarray) -> None:
    """A one-line ValueError unless x's trailing axes are `in_shape`."""
    if x.shape[max(x.ndim - len(self.in_shape), 0):] != self.in_shape:
      raise ValueError(f"input of shape {x.shape} does not end in this layer's input dims "
                       f"{self.in_shape}: pass [..., {', '.join(map(str, self.in_shape))}]")

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    self.check_input(x)
    dtype = self.dtype or x.dtype
    y = contract(x.astype(dtype), self.kernel[...].astype(dtype), len(self.in_shape))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


def sow_reads(module: nnx.Module, reads: SlotReads) -> None:
  """Sows the rows a memory table read (`memory_reads`, see ops/memory_usage.py) when the model
  runs under `nnx.capture(..., nnx.Intermediate)`, as the evals do; elsewhere (the train step)
  nothing is recorded. flax 0.12 marks a capture with `__captures__` on every module and
  deprecates `sow` outside one."""
  if hasattr(module, "__captures__"):
    module.sow(nnx.Intermediate, "memory_reads", reads)


def rms_norm(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """`x / rms(x)` over the last axis, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def l2_norm(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """`x / ||x||_2` over the last axis, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm (Zhang & Sennrich 2019) with a learned scale over the trailing `shape` axes."""

  def __init__(self, shape: Shape, *, axes: Axes = ("embed",), eps: float = 1e-6,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones_init(), shape, axes, param_dtype)
    self.eps = eps

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return rms_norm(x, self.eps) * self.scale[...].astype(x.dtype)


class SwiGLU(nnx.Module):
  """Feed-forward `W_down(silu(W_gate x) * W_up x)` (Shazeer 2020)."""

  def __init__(self, d_model: int, hidden: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Dense(d_model, hidden, axes=("embed", "mlp"), **kw)
    self.up = Dense(d_model, hidden, axes=("embed", "mlp"), **kw)
    self.down = Dense(hidden, d_model, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    self.gate.check_input(x)
    dtype = self.gate.dtype or x.dtype
    weights = (m.kernel[...].astype(dtype) for m in (self.gate, self.up, self.down))
    return swiglu(x.astype(dtype), *weights)

  def flops(self, batch: int, seq_len: int) -> int:
    return projection_flops(self, batch * seq_len)


class ShortConv(nnx.Module):
  """Depthwise causal conv over `[B, T, *feature_shape]` with a decode state of the last K-1
  inputs."""

  def __init__(self, feature_shape: Shape, *, kernel_size: int = 4, axes: Axes,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.feature_shape = _tuple(feature_shape)
    self.kernel_size = kernel_size
    # Identity at init plus small taps: a fresh conv passes the current token through.
    def init(key, shape, dtype):
      w = nnx.initializers.normal(0.02)(key, shape, dtype)
      return w.at[-1].add(1.0)
    self.weight = param(rngs, init, (kernel_size,) + self.feature_shape, (None,) + tuple(axes),
                        param_dtype)

  def init_state(self, batch_size: int, dtype=jnp.float32) -> jnp.ndarray:
    return jnp.zeros((batch_size, self.kernel_size - 1) + self.feature_shape, dtype)

  def flops(self, tokens: int) -> int:
    """Forward FLOPs (one multiply-add per tap and channel) of filtering `tokens` inputs."""
    return 2 * tokens * self.kernel_size * math.prod(self.feature_shape)

  def __call__(self, x: jnp.ndarray, *, segment_ids=None, state=None):
    """`x [B, T, *F] -> (y [B, T, *F], state [B, K-1, *F])`."""
    b, t = x.shape[:2]
    flat = x.reshape(b, t, -1)
    w = self.weight[...].reshape(self.kernel_size, -1)
    flat_state = None if state is None else state.reshape(b, self.kernel_size - 1, -1)
    # Under a mesh that shards time, shards exchange the K-1 inputs their taps reach back to.
    conv = sequence_sharded_conv1d if sequence_parallel_size() > 1 else causal_conv1d
    y, new_state = conv(flat, w, segment_ids=segment_ids, initial_state=flat_state)
    return y.reshape(x.shape), new_state.reshape((b, self.kernel_size - 1) + self.feature_shape)


def short_convs(convs, arrays, *, segment_ids, tails):
  """`SiLU(conv_i(arrays[i]))` for each array and its own short conv, continuing from the decode
  `tails` (None: a fresh sequence). Returns `(outputs, new tails)`, both tuples."""
  tails = (None,) * len(arrays) if tails is None else tails
  outs = [conv(a, segment_ids=segment_ids, state=tail)
          for conv, a, tail in zip(convs, arrays, tails)]
  return tuple(jax.nn.silu(a) for a, _ in outs), tuple(tail for _, tail in outs)


def projection_flops(module: nnx.Module, tokens: int) -> int:
  """Forward FLOPs of every `Dense` and `ShortConv` inside `module` (itself included), each applied
  once to each of `tokens` tokens; layers add the cost of their other contractions."""
  return sum(m.flops(tokens) for _, m in nnx.iter_modules(module)
             if isinstance(m, (Dense, ShortConv)))
