"""Titans' long-term memory module (LMM) as a sequence mixer (Behrouz et al. 2025, §3 and §4.4).

  x -> q, k, v = depthwise conv(W x) per head, SiLU, l2-normalised q and k (optional ATLAS
       polynomial features) -> theta, eta, alpha (and Omega's gamma) = sigmoid(W x) per head
    -> o_t = M_t(q_t) from the memory op (ops/neural_memory.py)
    -> per-head RMSNorm, SiLU output gate, output projection.

The memory's initial weights M_0 are learned per head (titans-pytorch does the same; the paper
leaves it open). `prefix` tokens (Titans' persistent memory, used by MAG / MAL) are read by the
memory ahead of every document, as their own chunk(s): each document starts from the state they
leave.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.models.layers.base import Mixer
from memzoo.models.layers.common import (Dense, RMSNorm, ShortConv, fan_in_init, l2_norm, param,
                                         projection_flops)
from memzoo.models.layers.registry import register_mixer
from memzoo.models.ops import memory_mlp
from memzoo.models.ops.neural_memory import (MemoryState, memory_state, neural_memory,
                                             neural_memory_flops)
from memzoo.models.ops.polynomial_features import (feature_dim, polynomial_features,
                                                   taylor_coefficients)

_GATE_BIAS = {"lr": 0.0, "momentum": 0.0, "omega": 0.0}  # the decay gate's is `decay_bias`


@register_mixer("lmm")
class NeuralMemory(Mixer):
  """Titans LMM: a per-head memory network trained online by the memory op.

  Args:
    d_model, num_heads: model width and memory heads H.
    head_dim: per-head width of q, k, v (d_model // H if None).
    chunk_size: mini-batch of the memory's gradient descent (1 = online GD).
    depth, expansion, activation, residual_memory: the memory network (1 = linear memory; the
      paper's default is a 2-layer MLP, §5.5).
    learned_init: learn the initial memory weights per head; False starts from zero weights (linear
      memory only: a deep memory at zero gets no gradient).
    max_lr: theta_t = max_lr * sigmoid(W x_t). 1.0 lets one write store a key-value pair; with
      titans-pytorch's 0.1 (its train_mac) the 2-layer memory learned no MQAR recall in 1,200
      steps (0.20 against 0.99), and Shakespeare's val loss was worse (1.705 against 1.682;
      experiments/titans). Stable with the soft gradient clip on: a deep memory's inner gradient
      is not bounded by |k|^2 as a linear one's is.
    momentum, weight_decay: learn eta_t / alpha_t; False fixes them to 0 (the paper's ablations).
    decay_bias: initial bias of alpha_t's logit. -4: alpha ~ 0.025 per token at init, so 256
      tokens later a write keeps ~0.2% of its strength; -8: alpha ~ 3e-4, ~90% kept. For recall
      across long filler (S-NIAH) the 2-layer memory learns only with decay_bias=-8 and
      max_lr=0.1; at the defaults its inner steps rewrite half its weights per chunk and the
      outer gradients blow up (experiments/titans, "Why the 2-layer memory did not learn it").
    conv, conv_size: depthwise causal conv of this width on q, k, v (§4.4).
    silu, qk_norm, output_gate: §4.4's SiLU on q/k/v, l2-normalised q/k and gated output.
    grad_clip: soft-clip each token's memory gradient to this norm (None: off). On by default:
      without it the inner gradient descent on a deep memory can diverge (weights overflow) on
      some inputs already at initialisation.
    omega_window, omega_gate: ATLAS Omega rule over the last c tokens with learned gamma_t
      (omega_gate=False: gamma = 1).
    poly_degree: ATLAS polynomial features of degree p on q and k (1: off).
    muon, ns_steps: ATLAS Newton-Schulz-orthogonalised momentum update.
  """

  def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None, *,
               chunk_size: int = 64, depth: int = 2, expansion: float = 4.0,
               activation: str = "gelu", residual_memory: bool = False, learned_init: bool = True,
               max_lr: float = 1.0,
               momentum: bool = True, weight_decay: bool = True, decay_bias: float = -4.0,
               conv: bool = True,
               conv_size: int = 4,
               silu: bool = True, qk_norm: bool = True, output_gate: bool = True,
               grad_clip: float | None = 1.0, omega_window: int = 1, omega_gate: bool = True,
               poly_degree: int = 1, muon: bool = False, ns_steps: int = 5, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    head_dim = head_dim or d_model // num_heads
    memory_mlp.activation_fn(activation)
    if poly_degree < 1:
      raise ValueError(f"poly_degree must be >= 1 (1 = no polynomial features), got {poly_degree}")
    key_dim = feature_dim(head_dim, poly_degree) if poly_degree > 1 else head_dim
    if residual_memory and key_dim != head_dim:
      raise ValueError("residual_memory needs equal key and value widths; use poly_degree=1")
    if not learned_init and depth > 1:
      raise ValueError("learned_init=False (zero initial weights) needs depth=1: a deep memory "
                       "at zero weights never gets a gradient")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    heads = ("embed", "heads", "head_dim")
    self.q_proj, self.k_proj, self.v_proj = (Dense(d_model, (num_heads, head_dim), axes=heads, **kw)
                                             for _ in range(3))
    self.convs = nnx.Dict({n: ShortConv((num_heads, head_dim), kernel_size=conv_size,
                                        axes=("heads", "head_dim"), param_dtype=param_dtype,
                                        rngs=rngs) for n in "qkv"}) if conv else None
    self.gate_names = (["lr"] + ["momentum"] * momentum + ["decay"] * weight_decay
                       + ["omega"] * (omega_window > 1 and omega_gate))
    biases = {**_GATE_BIAS, "decay": decay_bias}
    bias = jnp.array([biases[n] for n in self.gate_names])
    self.gate_proj = Dense(d_model, (len(self.gate_names), num_heads),
                           axes=("embed", None, "heads"), use_bias=True,
                           bias_init=lambda key, shape, dtype: jnp.broadcast_to(
                               bias[:, None], shape).astype(dtype), **kw)
    taylor = lambda key, shape, dtype: taylor_coefficients(poly_degree).astype(dtype)
    self.poly = (param(rngs, taylor, poly_degree + 1, (None,), param_dtype) if poly_degree > 1
                 else None)
    shapes = memory_mlp.layer_shapes(key_dim, head_dim, depth, expansion)
    self.initial_weights = nnx.List([
        param(rngs, fan_in_init(i) if depth > 1 else nnx.initializers.zeros_init(),
              (num_heads, i, o), ("heads", None, None), param_dtype) for i, o in shapes]
                                    if learned_init else [])
    self.zero_init = None if learned_init else (num_heads,) + shapes[0]
    self.out_norm = RMSNorm((num_heads, head_dim), axes=("heads", "head_dim"),
                            param_dtype=param_dtype, rngs=rngs)
    self.out_gate = (Dense(d_model, (num_heads, head_dim), axes=heads, **kw) if output_gate
                     else None)
    self.o_proj = Dense((num_heads, head_dim), d_model, axes=("heads", "head_dim", "embed"), **kw)
    self.memory_shapes = tuple(shapes)
    self.num_heads, self.chunk_size, self.max_lr = num_heads, chunk_size, max_lr
    self.dtype = dtype or param_dtype  # of activations, and so of the conv states
    self.silu, self.qk_norm, self.omega_window = silu, qk_norm, omega_window
    self.rule = dict(activation=activation, residual=residual_memory, grad_clip=grad_clip,
                     muon=muon, ns_steps=ns_steps)

  # Features -------------------------------------------------------------------------------------

  def features(self, name: str, x, *, conv_state=None, segment_ids=None):
    """Memory queries / keys (`name` "q" / "k") or values ("v") of `x [B, T, d]`, `[B, T, H, D]`,
    and the conv state after x."""
    return self.activate(name, getattr(self, f"{name}_proj")(x), conv_state=conv_state,
                         segment_ids=segment_ids)

  def activate(self, name: str, y, *, conv_state=None, segment_ids=None):
    """`features` after the projection: conv, SiLU, then l2 norm and polynomial map on q and k."""
    if self.convs is not None:
      y, conv_state = self.convs[name](y, segment_ids=segment_ids, state=conv_state)
    if self.silu:
      y = jax.nn.silu(y)
    if name != "v":
      if self.qk_norm:
        y = l2_norm(y)
      if self.poly is not None:
        y = polynomial_features(y, self.poly[...])
    return y, conv_state

  def gates(self, x) -> dict[str, Any]:
    """Per-token lr / momentum / decay / Omega weights, `[B, T, H]` float32."""
    logits = self.gate_proj(x).astype(jnp.float32)
    g = {n: jax.nn.sigmoid(logits[..., i, :]) for i, n in enumerate(self.gate_names)}
    zeros = jnp.zeros_like(g["lr"])
    return dict(lr=self.max_lr * g["lr"], momentum=g.get("momentum", zeros),
                decay=g.get("decay", zeros), omega_weights=g.get("omega"))

  def output(self, o, x):
    """Memory reads `o [B, T, H, D]` -> `[B, T, d]`: per-head norm, SiLU gate from x, projection."""
    o = self.out_norm(o)
    if self.out_gate is not None:
      o = o * jax.nn.silu(self.out_gate(x))
    return self.o_proj(o)

  # Memory ---------------------------------------------------------------------------------------

  def initial_state(self, batch_size: int, prefix=None) -> tuple[MemoryState, jnp.ndarray | None]:
    """The memory state a document starts from, and the memory's outputs `[N, d]` on `prefix`.

    Without prefix: the learned initial weights. With `prefix [N, d]` (persistent tokens): the state
    after reading them, moved to a chunk boundary with an empty Omega window."""
    weights = tuple(w[...].astype(jnp.promote_types(w.dtype, jnp.float32))[None]
                    for w in self.initial_weights)
    if self.zero_init is not None:
      weights = (jnp.zeros((1,) + self.zero_init, jnp.promote_types(self.dtype, jnp.float32)),)
    state = memory_state(weights, omega_window=self.omega_window)
    prefix_out = None
    if prefix is not None:
      o, state, _ = self.run(prefix[None], state, mode="recurrent")  # a few tokens: the light form
      prefix_out = o[0]
      state = memory_state(state.weights, momentum=state.momentum, omega_window=self.omega_window)
    batch = lambda a: jnp.broadcast_to(a, (batch_size,) + a.shape[1:])
    return jax.tree.map(batch, state._replace(offset=None))._replace(offset=0), prefix_out

  def write(self, feats, x, state: MemoryState, *, segment_ids=None, reset_state=None,
            mode: str | None = None):
    """Runs the memory op on features `feats` ("q", "k", "v") with gates from `x [B, T, d]`:
    `(reads [B, T, H, D], state)`. mode: chunk form, or the recurrent one for a single token."""
    mode = mode or ("recurrent" if x.shape[1] == 1 else "chunk")
    return neural_memory(feats["q"], feats["k"], feats["v"], **self.gates(x), state=state,
                         chunk_size=self.chunk_size, segment_ids=segment_ids,
                         reset_state=reset_state, mode=mode, **self.rule)

  def run(self, x, state: MemoryState, *, conv_state=None, segment_ids=None, reset_state=None,
          mode: str | None = None):
    """Writes `x [B, T, d]` into the memory, reading each token after its own update.
    `conv_state`: dict of "q", "k", "v" conv states (zeros if None); mode: as in `write`.
    Returns `(y [B, T, d], memory state, conv state)`."""
    conv_state = conv_state or {}
    feats, new_conv = {}, {}
    for name in "qkv":
      feats[name], new_conv[name] = self.features(name, x, conv_state=conv_state.get(name),
                                                  segment_ids=segment_ids)
    o, state = self.write(feats, x, state, segment_ids=segment_ids, reset_state=reset_state,
                          mode=mode)
    return self.output(o, x), state, new_conv if self.convs is not None else {}

  def read(self, weights, q, x):
    """`M(q)` with fixed memory `weights` (no update) for queries `q [B, T, H, D]` (see
    `features`), through `output` with the gate from `x [B, T, d]`."""
    o = memory_mlp.forward(weights, jnp.swapaxes(q, 1, 2).astype(weights[0].dtype),
                           self.rule["activation"], self.rule["residual"])
    return self.output(jnp.swapaxes(o, 1, 2).astype(x.dtype), x)

  def conv_state(self, batch_size: int, names: str = "qkv"):
    if self.convs is None:
      return {}
    return {n: self.convs[n].init_state(batch_size, self.dtype) for n in names}

  # FLOPs (layers/base.py, FlopCounted) ----------------------------------------------------------

  def op_flops(self, batch: int, length: int, mode: str | None = None) -> int:
    """The memory op on `[batch, length]` tokens (mode: as in `write`)."""
    mode = mode or ("recurrent" if length == 1 else "chunk")
    return neural_memory_flops(batch, length, self.num_heads, self.memory_shapes,
                               chunk_size=self.chunk_size, mode=mode,
                               omega_window=self.omega_window, muon=self.rule["muon"],
                               ns_steps=self.rule["ns_steps"])

  def read_flops(self, tokens: int) -> int:
    """`read` of `tokens` queries: the memory network, then `output`'s gate and projection."""
    gate = 0 if self.out_gate is None else self.out_gate.flops(tokens)
    return (memory_mlp.forward_flops(self.memory_shapes, tokens * self.num_heads) + gate
            + self.o_proj.flops(tokens))

  def prefix_flops(self, prefix_len: int) -> int:
    """`initial_state` reading `prefix_len` persistent tokens (one copy, the recurrent form)."""
    if not prefix_len:
      return 0
    return projection_flops(self, prefix_len) + self.op_flops(1, prefix_len, "recurrent")

  def flops(self, batch: int, seq_len: int) -> int:
    """Projections, short convs and the memory op, without prefix (see `prefix_flops`)."""
    return projection_flops(self, batch * seq_len) + self.op_flops(batch, seq_len)

  # Mixer ----------------------------------------------------------------------------------------

  def __call__(self, x, *, segment_ids=None, prefix=None):
    state, _ = self.initial_state(x.shape[0], prefix)
    reset = None if segment_ids is None else (state.weights, state.momentum)
    return self.run(x, state, segment_ids=segment_ids, reset_state=reset)[0]

  def init_state(self, batch_size: int, max_len: int, prefix=None):
    del max_len  # the memory's state has a fixed size
    memory, _ = self.initial_state(batch_size, prefix)
    return {"memory": memory._replace(offset=jnp.zeros((), jnp.int32)),
            "conv": self.conv_state(batch_size)}

  def prefill(self, x, state):
    y, memory, conv = self.run(x, state["memory"], conv_state=state["conv"])
    return y, {"memory": memory, "conv": conv}

  def step(self, x_t, state):
    y, state = self.prefill(x_t[:, None], state)
    return y[:, 0], state
