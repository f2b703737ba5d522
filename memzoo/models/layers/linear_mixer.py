"""The skeleton shared by the linear-recurrent mixers (retention, linear attention, GLA, DeltaNets).

  x -> q, k, v projections [-> short causal conv -> SiLU]
    -> layer features (RoPE, feature map, L2 norm, beta, decay)      (subclass: `features`)
    -> linear_attention or delta_rule                                 (subclass: `op`)
    -> per-head RMSNorm [* swish(gate(x))] -> output projection.

Training runs the chunk form over the whole sequence; `prefill` runs it from a carried state and
`step` runs one token of the recurrent form. The decode state holds the `[B, H, Dk, Dv]` float32
matrix, the short-conv tails and the position reached.

Under a mesh whose "sequence" axis is > 1, `__call__` and `prefill` run the op and the short conv
sequence-parallel (ops/linear_sequence_parallel.py: the local chunk form on every shard, one
all-gather of the shard states and transitions, a ppermute halo for the conv).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.base import Mixer
from memzoo.models.layers.common import Dense, RMSNorm, ShortConv, projection_flops, short_convs
from memzoo.models.ops.linear_attention import linear_attention, linear_attention_flops
from memzoo.models.ops.linear_sequence_parallel import sequence_sharded_recurrence
from memzoo.models.ops.segments import segment_positions
from memzoo.models.ops.sequence_parallel import sequence_parallel_size


CHUNK_SIZE = 64  # fla's chunk: full matmul tiles on GPU / TPU


def recurrence_op(op, length: int):
  """`op` (`linear_attention` or `delta_rule`), or `sequence_sharded_recurrence`, its LASP-2 form
  with the same arguments, when the current mesh shards time and there is more than one token."""
  return sequence_sharded_recurrence if length > 1 and sequence_parallel_size() > 1 else op


class LinearMixer(Mixer):
  """Base class; subclasses set `op` (with its FLOP count `op_flops` and the shape of their decay,
  `gate`: None, "scalar" or "vector" over Dk) and implement `features`.

  Args:
    d_model: model width.
    num_heads: H.
    key_dim, value_dim: per-head widths of the q / k and v projections.
    state_key_dim: Dk of the recurrent state, if `features` changes it (feature maps).
    conv_size: kernel of the short causal conv on q, k, v (followed by SiLU); None for no conv.
    output_gate: multiply the normalised output by swish(W_g x) (RetNet, GLA, GDN).
    mode: form used by `__call__` and `prefill` ("chunk", "recurrent", or "parallel" where the op
      has it); `step` always runs the recurrent form.
    chunk_size: chunk length of the chunk form; None for `default_chunk_size()`.
    norm_eps: epsilon of the per-head output RMSNorm.
  """

  op = staticmethod(linear_attention)
  op_flops = staticmethod(linear_attention_flops)
  gate = None
  cpu_chunk_size = CHUNK_SIZE  # see `default_chunk_size`

  def __init__(self, d_model: int, num_heads: int, key_dim: int, value_dim: int, *,
               state_key_dim: int | None = None, conv_size: int | None = None,
               output_gate: bool = True, mode: str = "chunk", chunk_size: int | None = None,
               norm_eps: float = 1e-5, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    axes = ("embed", "heads", "head_dim")
    self.q_proj = Dense(d_model, (num_heads, key_dim), axes=axes, **kw)
    self.k_proj = Dense(d_model, (num_heads, key_dim), axes=axes, **kw)
    self.v_proj = Dense(d_model, (num_heads, value_dim), axes=axes, **kw)
    conv = lambda width: ShortConv((num_heads, width), kernel_size=conv_size,
                                   axes=("heads", "head_dim"), param_dtype=param_dtype, rngs=rngs)
    self.convs = nnx.List([conv(key_dim), conv(key_dim), conv(value_dim)]) if conv_size else None
    self.out_norm = RMSNorm(value_dim, axes=("head_dim",), eps=norm_eps, param_dtype=param_dtype,
                            rngs=rngs)
    self.gate_proj = (Dense(d_model, (num_heads, value_dim), axes=axes, **kw) if output_gate
                      else None)
    self.o_proj = Dense((num_heads, value_dim), d_model, axes=("heads", "head_dim", "embed"), **kw)
    self.num_heads, self.value_dim = num_heads, value_dim
    self.state_key_dim = state_key_dim or key_dim
    self.mode, self.chunk_size = mode, chunk_size or self.default_chunk_size()

  @classmethod
  def default_chunk_size(cls) -> int:
    """The chunk length when none is given: 64, or the layer's `cpu_chunk_size` when JAX's default
    backend is the CPU. A speed setting only (every chunk size computes the same function): on
    CPU the intra-chunk products cost C (Dk + Dv) per token and the state's C-independent, and for
    retention, GLA and the DeltaNets 32 measured 2-10% faster than 64 (experiments/bench_linear)."""
    return cls.cpu_chunk_size if jax.default_backend() == "cpu" else CHUNK_SIZE

  def features(self, x, q, k, v, positions) -> dict:
    """`x [B, T, d]`, `q, k [B, T, H, key_dim]`, `v`, `positions [B, T]` -> the op's keyword
    arguments: `q, k, v` and, as the layer needs them, `beta`, `log_decay`, `scale`."""
    raise NotImplementedError

  def _mix(self, x, *, segment_ids, state, mode):
    b, t, _ = x.shape
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    conv_state = None
    if self.convs is not None:
      (q, k, v), conv_state = short_convs(self.convs, (q, k, v), segment_ids=segment_ids,
                                          tails=None if state is None else state["conv"])
    if state is None:
      positions = segment_positions(segment_ids, b, t)
    else:
      positions = jnp.broadcast_to(state["pos"] + jnp.arange(t, dtype=jnp.int32), (b, t))
    op = recurrence_op(self.op, t)
    o, recurrent = op(**self.features(x, q, k, v, positions),
                      initial_state=None if state is None else state["recurrent"],
                      segment_ids=segment_ids, mode=mode, chunk_size=self.chunk_size)
    y = self.out_norm(o)
    if self.gate_proj is not None:
      y = y * jax.nn.silu(self.gate_proj(x))
    new_state = None if state is None else {"recurrent": recurrent, "conv": conv_state,
                                             "pos": state["pos"] + t}
    return self.o_proj(y), new_state

  def __call__(self, x, *, segment_ids=None):
    return self._mix(x, segment_ids=segment_ids, state=None, mode=self.mode)[0]

  def flops(self, batch: int, seq_len: int) -> int:
    """Projections (the layer's own included), short convs, and the op in `mode`."""
    op = self.op_flops(batch, seq_len, self.num_heads, self.state_key_dim, self.value_dim,
                       gate=self.gate, mode=self.mode, chunk_size=self.chunk_size)
    return projection_flops(self, batch * seq_len) + op

  def init_state(self, batch_size: int, max_len: int):
    """O(1) in `max_len`: `{"recurrent": [B, H, Dk, Dv] f32, "conv": tails or None, "pos": int}`."""
    del max_len
    dtype = self.q_proj.dtype or self.q_proj.kernel[...].dtype
    conv = (None if self.convs is None else
            tuple(conv.init_state(batch_size, dtype) for conv in self.convs))
    shape = (batch_size, self.num_heads, self.state_key_dim, self.value_dim)
    return {"recurrent": jnp.zeros(shape, jnp.float32), "conv": conv,
            "pos": jnp.zeros((), jnp.int32)}

  def prefill(self, x, state):
    return self._mix(x, segment_ids=None, state=state, mode=self.mode)

  def step(self, x_t, state):
    y, state = self._mix(x_t[:, None], segment_ids=None, state=state, mode="recurrent")
    return y[:, 0], state
