"""Mixture-of-Memories (MoM, Du et al. 2025, arXiv 2502.13685)."""

import jax
import jax.numpy as jnp
from flax import nnx

from memzoo.errors import ConfigError
from memzoo.models.layers.base import Mixer
from memzoo.models.layers.common import (Dense, RMSNorm, ShortConv, head_width, l2_norm,
                                         param, projection_flops, short_convs)
from memzoo.models.layers.deltanet import a_log_init, dt_bias_init
from memzoo.models.layers.linear_mixer import recurrence_op
from memzoo.models.layers.registry import register_mixer
from memzoo.models.ops.delta_rule import delta_rule, delta_rule_flops
from memzoo.models.ops.linear_attention import linear_attention, linear_attention_flops
from memzoo.models.ops.linear_sequence_parallel import sequence_sharded_recurrence
from memzoo.models.ops.mixture_of_memories import FORMS, mixture_of_memories
from memzoo.models.ops.routing import load_balancing_loss, top_k_route

# memory_op -> (op, has a writing strength beta, has a decay)
MEMORY_OPS = {
    "gated_delta_rule": (delta_rule, True, True),  # Gated DeltaNet (the MoM paper's best)
    "delta_rule": (delta_rule, True, False),
    "gated_linear_attention": (linear_attention, False, True),  # scalar gate: Mamba2 / simple GLA
    "linear_attention": (linear_attention, False, False),
}
OP_FLOPS = {delta_rule: delta_rule_flops, linear_attention: linear_attention_flops}


def _check(condition: bool, option: str, problem: str, fix: str) -> None:
  if not condition:
    raise ConfigError(f"config.model.mom.{option}", problem, fix)


@register_mixer("mom")
class MixtureOfMemories(Mixer):
  """A router sends each token to `top_k` of `num_memories` recurrent memories; each memory is
  written only at the tokens routed to it, in order, and a shared memory is written at every
  token. Per token t, with router probabilities p_t = softmax(W_r x_t) and chosen set K_t:

    o_t = sum_{e in K_t} (p_te / sum_{e' in K_t} p_te') read_e(q_t) + read_shared(q_t)
    y_t = W_o (RMSNorm(o_t) * swish(W_g x_t))

  Memory e keeps its own state S^e [H, Dk, Dv], its own key, value, beta and decay projections
  (q is shared) and follows `memory_op`, by default Gated DeltaNet's
  `S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T` with Mamba2's decay a_t. q and k
  pass a short causal conv + SiLU and are L2-normalised, as in Gated DeltaNet.

  Routing: top-k on the float32 router logits, ties broken towards the lower memory index
  (`ops/routing.py`). `mix_with_aux` also returns Switch's load-balancing loss
  (`load_balancing_loss`: 1 for a balanced router, E at worst); the trainer adds
  `config.model.aux_loss_coef` times its sum over layers.

  Short convs: every memory's key / value conv runs over the whole sequence, before routing, so a
  routed token's key still carries its neighbours (MQAR's key-value pairs stay adjacent) and the
  masked form stays exact; a memory's *state* only ever sees its routed tokens. (fla's MomAttention
  convolves the dispatched subsequences instead.)

  Sequence parallelism: under a mesh whose "sequence" axis is > 1, `__call__` and `prefill` run
  the masked form with `sequence_sharded_recurrence` (ops/linear_sequence_parallel.py): the M
  memories on the head axis are one linear-attention or delta-rule recurrence, so each shard runs
  its tokens from a zero state, one all-gather passes every memory's shard state and transition,
  and each shard folds in the states of the shards before it. The routing, projections and short
  convs are per token (the convs take a halo). The gathered form, which sorts a row's tokens by
  memory, is not sharded.

  Forms (`ops/mixture_of_memories.py`): "masked" runs all M = num_memories (+1 shared) memories
  over every token, a memory's state passing unchanged where the token is not routed to it;
  "gathered" sorts the token-memory assignments so each memory runs only over its own tokens
  (top_k (+1) instead of M tokens of recurrence per token, plus a sort and two gathers). They are
  the same function. `__call__` uses `form`, by default "gathered": 1.37-1.46x faster than
  "masked" for forward + backward at T 512-8K on a 2-core CPU (experiments/mom/README.md; not
  measured on an accelerator, where the masked form's dense work may win). `prefill` and `step`
  always use the masked form, which carries the M states. No capacity limit: dropping tokens
  past a memory's capacity would make a token's output depend on how many tokens of its row
  (other documents included) came before it.

  Args:
    d_model, num_heads: model width and H.
    num_memories: routed memories E (MoM paper: 4).
    top_k: memories per token (MoM paper: 2).
    shared_memory: add a memory written at every token, with weight 1 (MoM paper: on).
    memory_op: "gated_delta_rule", "delta_rule", "gated_linear_attention" (linear attention with
      Mamba2's scalar decay) or "linear_attention".
    form: "masked" or "gathered", the form of `__call__`.
    expand_k, expand_v: total q / k and v widths per memory as multiples of d_model (fla's
      MomConfig: expand_v 1).
    conv_size: short-conv kernel (None: no conv).
    output_gate: swish output gate.
    mode, chunk_size: the op's training form ("chunk" or "recurrent") and chunk length.
    norm_eps: epsilon of the per-head output RMSNorm.

  Decode state: `{"memories": [B, M, H, Dk, Dv] float32, "conv": the short-conv tails or None}`.
  """

  def __init__(self, d_model: int, num_heads: int, *, num_memories: int = 4, top_k: int = 2,
               shared_memory: bool = True, memory_op: str = "gated_delta_rule",
               form: str = "gathered", expand_k: float = 1.0, expand_v: float = 1.0,
               conv_size: int | None = 4, output_gate: bool = True, mode: str = "chunk",
               chunk_size: int = 64, norm_eps: float = 1e-5, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    _check(isinstance(num_memories, int) and num_memories >= 1, "num_memories",
           f"got {num_memories!r}", "use a positive int such as 4")
    _check(isinstance(top_k, int) and 1 <= top_k <= num_memories, "top_k",
           f"got {top_k!r} with num_memories={num_memories}", "use 1 <= top_k <= num_memories")
    _check(memory_op in MEMORY_OPS, "memory_op", f"unknown {memory_op!r}",
           f"choose one of {sorted(MEMORY_OPS)}")
    _check(form in FORMS, "form", f"unknown {form!r}", f"choose one of {list(FORMS)}")
    key_dim = head_width(d_model, expand_k, num_heads, "expand_k")
    value_dim = head_width(d_model, expand_v, num_heads, "expand_v")
    count = num_memories + int(shared_memory)  # memories with a state
    _, has_beta, has_decay = MEMORY_OPS[memory_op]
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.router = Dense(d_model, num_memories, axes=("embed", None), dtype=jnp.float32,
                        param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Dense(d_model, (num_heads, key_dim), axes=("embed", "heads", "head_dim"), **kw)
    per_memory = ("embed", None, "heads", "head_dim")
    self.k_proj = Dense(d_model, (count, num_heads, key_dim), axes=per_memory, **kw)
    self.v_proj = Dense(d_model, (count, num_heads, value_dim), axes=per_memory, **kw)
    scalar = lambda: Dense(d_model, (count, num_heads), axes=("embed", None, "heads"), **kw)
    self.beta_proj = scalar() if has_beta else None
    self.decay_proj = scalar() if has_decay else None
    # The decay parameters stay float32 whatever param_dtype is.
    self.A_log = param(rngs, a_log_init, (count, num_heads), (None, "heads")) if has_decay else None
    self.dt_bias = (param(rngs, dt_bias_init, (count, num_heads), (None, "heads")) if has_decay
                    else None)
    conv = lambda shape, axes: ShortConv(shape, kernel_size=conv_size, axes=axes,
                                         param_dtype=param_dtype, rngs=rngs)
    self.convs = nnx.List([
        conv((num_heads, key_dim), ("heads", "head_dim")),
        conv((count, num_heads, key_dim), per_memory[1:]),
        conv((count, num_heads, value_dim), per_memory[1:])]) if conv_size else None
    self.out_norm = RMSNorm(value_dim, axes=("head_dim",), eps=norm_eps, param_dtype=param_dtype,
                            rngs=rngs)
    self.gate_proj = (Dense(d_model, (num_heads, value_dim), axes=("embed", "heads", "head_dim"),
                            **kw) if output_gate else None)
    self.o_proj = Dense((num_heads, value_dim), d_model, axes=("heads", "head_dim", "embed"), **kw)
    self.num_memories, self.top_k, self.shared_memory = num_memories, top_k, shared_memory
    self.memory_op, self.form, self.mode, self.chunk_size = memory_op, form, mode, chunk_size
    self.state_shape = (count, num_heads, key_dim, value_dim)

  def flops(self, batch: int, seq_len: int) -> int:
    """Projections, router and convs, plus the op over the tokens each form runs: M T per head
    for the masked form (every memory over every token), P T for the gathered one (module doc of
    ops/mixture_of_memories.py)."""
    count, heads, key_dim, value_dim = self.state_shape
    slots = self.top_k + int(self.shared_memory)
    length, heads = ((seq_len, count * heads) if self._form(seq_len) == "masked" else
                     (slots * seq_len, heads))
    op, _, decays = MEMORY_OPS[self.memory_op]
    return projection_flops(self, batch * seq_len) + OP_FLOPS[op](
        batch, length, heads, key_dim, value_dim, gate="scalar" if decays else None,
        mode=self.mode, chunk_size=self.chunk_size)

  def _form(self, seq_len: int) -> str:
    """The form `__call__` runs: the configured one, or the masked one where the mesh shards time
    (one recurrence over the M H heads; the gathered form's sort is not sharded)."""
    sharded = recurrence_op(MEMORY_OPS[self.memory_op][0], seq_len) is sequence_sharded_recurrence
    return "masked" if sharded else self.form

  def _slots(self, weights, indices):
    """The memories each token reads, `[B, T, P]`, and their weights: the routed top-k, then the
    shared memory (index num_memories) with weight 1."""
    if not self.shared_memory:
      return indices, weights
    shared = jnp.full(indices.shape[:-1] + (1,), self.num_memories, indices.dtype)
    return (jnp.concatenate([indices, shared], -1),
            jnp.concatenate([weights, jnp.ones_like(weights[..., :1])], -1))

  def _mix(self, x, *, segment_ids, state, form, mode):
    """`(y, new state or None, (router probs, chosen indices))`."""
    weights, indices, probs = top_k_route(self.router(x), self.top_k)
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    conv_state = None
    if self.convs is not None:
      (q, k, v), conv_state = short_convs(self.convs, (q, k, v), segment_ids=segment_ids,
                                          tails=None if state is None else state["conv"])
    features = {}
    if self.beta_proj is not None:
      features["beta"] = jax.nn.sigmoid(self.beta_proj(x).astype(jnp.float32))
    if self.decay_proj is not None:  # Mamba2 / Gated DeltaNet eq. 10
      dt = jax.nn.softplus(self.decay_proj(x).astype(jnp.float32) + self.dt_bias[...])
      features["log_decay"] = -jnp.exp(self.A_log[...]) * dt
    memories, slot_weights = self._slots(weights, indices)
    o, memory_state = mixture_of_memories(
        recurrence_op(MEMORY_OPS[self.memory_op][0], x.shape[1]), l2_norm(q), l2_norm(k), v,
        **features, memories=memories, weights=slot_weights,
        initial_state=None if state is None else state["memories"],
        segment_ids=segment_ids, form=form, mode=mode, chunk_size=self.chunk_size)
    y = self.out_norm(o)
    if self.gate_proj is not None:
      y = y * jax.nn.silu(self.gate_proj(x))
    new_state = None if state is None else {"memories": memory_state, "conv": conv_state}
    return self.o_proj(y), new_state, (probs, indices)

  def __call__(self, x, *, segment_ids=None):
    return self.mix_with_aux(x, segment_ids=segment_ids)[0]

  def mix_with_aux(self, x, *, segment_ids=None):
    """`(y, Switch load-balancing loss of this call's routing)`."""
    y, _, (probs, indices) = self._mix(x, segment_ids=segment_ids, state=None,
                                       form=self._form(x.shape[1]), mode=self.mode)
    return y, load_balancing_loss(probs, indices)

  def init_state(self, batch_size: int, max_len: int):
    """O(1) in `max_len`: `{"memories": [B, M, H, Dk, Dv] float32, "conv": tails or None}`."""
    del max_len
    dtype = self.q_proj.dtype or self.q_proj.kernel[...].dtype
    conv = (None if self.convs is None else
            tuple(conv.init_state(batch_size, dtype) for conv in self.convs))
    return {"memories": jnp.zeros((batch_size,) + self.state_shape, jnp.float32), "conv": conv}

  def prefill(self, x, state):
    y, state, _ = self._mix(x, segment_ids=None, state=state, form="masked", mode=self.mode)
    return y, state

  def step(self, x_t, state):
    y, state, _ = self._mix(x_t[:, None], segment_ids=None, state=state, form="masked",
                            mode="recurrent")
    return y[:, 0], state
