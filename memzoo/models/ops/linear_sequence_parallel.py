"""Sequence parallelism for the linear-recurrent ops and their short conv (LASP-2 style).

The time axis is sharded over a mesh axis ("sequence"); shard d holds L consecutive tokens. The
recurrence of ops/linear_recurrence.py, S_t = A_t S_{t-1} + k_t u_t^T, is affine in the state, so
over one shard

  S_out = T_d S_in + S_d,        o_t = o_t^0 + r_t^T S_in,

where o^0 and S_d are the shard's outputs and final state from a zero initial state, T_d is the
shard's transition (the product of its A_t) and r_t = scale P_t^T q_t reads S_in at token t (P_t:
the transition from the shard start to t). Each device computes (o^0, r, S_d, T_d) in one run of the
local chunk form; one all-gather of the (S_d, T_d) pairs (N of them, whatever T is); each device
then folds the pairs in order, S_in(0) = initial state, S_in(d+1) = T_d S_in(d) + S_d, and adds
r_t^T S_in(d) to its outputs. This is LASP-2 (Sun et al. 2025, arXiv 2502.07563, sec. 3) with
decays: recurrentgemma's `multi_shard_correction` does the same for a diagonal recurrence.

Transitions:
* Linear attention (no, scalar or vector decay): A_t = diag(exp(g_t)), so T_d = diag(exp(G_L)) and
  r_t = scale exp(G_t) q_t with G_t the cumulative log decay from the shard start (exponents <= 0).
* Delta rule: A_t = (I - beta_t k_t k_t^T) diag(a_t) is a dense Dk x Dk matrix. The state's columns
  evolve independently (S_t[:, j] = A_t S_{t-1}[:, j] + beta_t k_t v_t[j]), so the chunk (WY) form
  run on values widened by Dk zero columns from the initial state [0 | I] carries P_t in the extra
  columns: the extra block of its final state is T_d, that of its outputs is r_t. Cost: the work
  proportional to the value width grows by (Dv + Dk) / Dv, i.e. about 3 C Dk^2 more multiply-adds
  per chunk of C tokens and head (u = u' - W S, the read-out and the state update); the intra-chunk
  scores and the triangular inverse do not depend on Dv and are not repeated. Multiplying out the
  chunk transitions diag(a) - K_w^T W instead costs Dk^3 + C Dk^2 per chunk and still lacks r_t.
  The all-gather moves N (Dk^2 + Dk Dv) floats per head; the fold costs N Dk^2 Dv per head.

Packed documents: a document start inside the shard cuts S_in off from there on (r and T are zero
after it: the local resets do that for the delta rule, the cumulative gate is masked for linear
attention). A shard whose first token starts a document (its id differs from the previous shard's
last id, one ppermute of B ids) ignores S_in altogether.

Gradients: plain autodiff through the local op, the all-gather (its transpose is a reduce-scatter)
and the fold; tested against one device. No custom VJP is needed.

The short causal conv before the recurrence reads K - 1 inputs back: each shard receives the
previous shard's last K - 1 inputs (one ppermute, a halo).
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from memzoo.models.ops.chunking import pad_time
from memzoo.models.ops.conv import causal_conv1d
from memzoo.models.ops.delta_rule import delta_rule
from memzoo.models.ops.linear_attention import linear_attention
from memzoo.models.ops.linear_recurrence import document_starts
from memzoo.models.ops.sequence_parallel import (SEQUENCE_AXIS, from_previous_shard,
                                                 mesh_with_axis, place_for_shard_map, sharded_dim)

# ------------------------------------------------------------------------------------------------
# The recurrence.


def _continues_previous(segment_ids, axis_name: str, batch: int) -> jnp.ndarray:
  """`[B]` bool: the shard's first token is in the document that the incoming state belongs to."""
  if segment_ids is None:
    return jnp.ones((batch,), bool)
  previous_last = from_previous_shard(segment_ids[:, -1], axis_name)
  return (jax.lax.axis_index(axis_name) == 0) | (segment_ids[:, 0] == previous_last)


def _diagonal_shard(q, k, v, *, log_decay, scale, continues, segment_ids, mode, chunk_size):
  """Local pass of linear attention: `(o^0, r, S_d, T_d)` with T_d `[B, H, 1 | Dk]`."""
  o, state = linear_attention(q, k, v, log_decay=log_decay, scale=scale, segment_ids=segment_ids,
                              mode=mode, chunk_size=chunk_size)
  b, length, h, _ = q.shape
  g = (jnp.zeros((b, length, h, 1)) if log_decay is None
       else log_decay.reshape(b, length, h, -1))
  starts = document_starts(segment_ids)
  starts = (jnp.zeros((b, length), bool) if starts is None else starts).at[:, 0].set(~continues)
  sees_input = (jnp.cumsum(starts, axis=1) == 0)[..., None, None]  # [B, L, 1, 1]
  cum_gate = jnp.cumsum(g, axis=1)
  read = scale * q * jnp.exp(cum_gate) * sees_input
  return o, read, state, jnp.exp(cum_gate[:, -1]) * sees_input[:, -1]


def _delta_shard(q, k, v, beta, *, log_decay, scale, continues, segment_ids, mode, chunk_size):
  """Local pass of the delta rule on values widened by Dk zero columns from the initial state
  [0 | I] (module doc): `(o^0, r, S_d, T_d)` with T_d `[B, H, Dk, Dk]`."""
  b, length, h, dk = q.shape
  dv = v.shape[-1]
  widened = jnp.concatenate([v, jnp.zeros((b, length, h, dk), v.dtype)], axis=-1)
  identity = jnp.eye(dk) * continues[:, None, None, None]  # [B, 1, Dk, Dk]
  initial = jnp.concatenate([jnp.zeros((b, h, dk, dv)), jnp.broadcast_to(identity, (b, h, dk, dk))],
                            axis=-1)
  o, state = delta_rule(q, k, widened, beta, log_decay=log_decay, scale=scale,
                        initial_state=initial, segment_ids=segment_ids, mode=mode,
                        chunk_size=chunk_size)
  return o[..., :dv], o[..., dv:], state[..., :dv], state[..., dv:]


def _apply(transition, state):
  """`T S` for a shard transition: `[B, H, Dk, Dk]` (delta rule) or diagonal `[B, H, 1 | Dk]`."""
  if transition.ndim == state.ndim:
    return jnp.einsum("bhij,bhjv->bhiv", transition, state)
  return transition[..., None] * state


def sequence_parallel_recurrence(q, k, v, beta=None, *, axis_name: str, log_decay=None,
                                 scale: float | None = None, initial_state=None, segment_ids=None,
                                 mode: str = "chunk", chunk_size: int = 64):
  """`linear_attention` (beta None) or `delta_rule` over a time axis sharded on `axis_name`; call
  inside `shard_map` over that axis.

  Args:
    q, k, v, beta, log_decay, segment_ids: this shard's slice (time, dimension 1, of length L) of
      the arguments of `linear_attention` / `delta_rule`.
    axis_name: the mesh axis time is sharded over, shards in time order.
    initial_state: `[B, H, Dk, Dv]`, the state before the first shard (the same on every shard);
      zeros if None.
    scale, mode, chunk_size: as in the ops; every shard runs that form locally (L need not be a
      multiple of chunk_size).

  Returns:
    `(o [B, L, H, Dv] in q's dtype, final_state [B, H, Dk, Dv] float32)`: this shard's outputs and
    the state after the whole sequence (the same on every shard).
  """
  b, _, _, dk = q.shape
  f32 = lambda a: None if a is None else a.astype(jnp.float32)  # o^0 + r S_in rounded once
  local = dict(log_decay=f32(log_decay), scale=dk ** -0.5 if scale is None else scale,
               continues=_continues_previous(segment_ids, axis_name, b), segment_ids=segment_ids,
               mode=mode, chunk_size=chunk_size)
  if beta is None:
    o, read, state, transition = _diagonal_shard(f32(q), f32(k), f32(v), **local)
  else:
    o, read, state, transition = _delta_shard(f32(q), f32(k), f32(v), f32(beta), **local)
  states, transitions = jax.lax.all_gather((state, transition), axis_name, to="invarying")

  def fold(incoming, shard):
    shard_state, shard_transition = shard
    return _apply(shard_transition, incoming) + shard_state, incoming

  initial = jnp.zeros(state.shape) if initial_state is None else initial_state.astype(jnp.float32)
  final, incoming = jax.lax.scan(fold, initial, (states, transitions))
  incoming = jax.lax.dynamic_index_in_dim(incoming, jax.lax.axis_index(axis_name), keepdims=False)
  o = o + jnp.einsum("blhk,bhkv->blhv", read, incoming)
  return o.astype(q.dtype), final


def _shard_time(local, sharded, replicated, *, mesh, axis_name: str):
  """`shard_map` of `local(sharded, replicated) -> (sharded_out, replicated_out)`, only `axis_name`
  manual: time (dimension 1) of every leaf of `sharded` and `sharded_out` is split over it (T a
  multiple of its size); `replicated` and `replicated_out` are the same on every shard."""
  place = lambda tree, dim: jax.tree.map(lambda x: place_for_shard_map(x, mesh, axis_name, dim),
                                         tree)
  time = P(None, axis_name)
  return jax.shard_map(local, mesh=mesh, in_specs=(time, P()), out_specs=(time, P()),
                       axis_names={axis_name})(place(sharded, 1), place(replicated, None))


def sequence_sharded_recurrence(q, k, v, beta=None, *, log_decay=None, scale: float | None = None,
                                initial_state=None, segment_ids=None, mode: str = "chunk",
                                chunk_size: int = 64, mesh=None, axis_name: str = SEQUENCE_AXIS):
  """`linear_attention` (beta None) or `delta_rule` on global arrays, time sharded over
  `axis_name` of `mesh` (None: the current mesh) with `sequence_parallel_recurrence`.

  Takes the arguments of the ops (global `[B, T, ...]` arrays) and returns what they return. T need
  not be divisible by the shard count: the tail is padded with zero tokens (k = v = g = beta = 0,
  no document start), which leave the state as it is. Only `axis_name` becomes manual; other mesh
  axes (batch, heads) keep their sharding.
  """
  mesh = mesh_with_axis(mesh, axis_name)
  n = mesh.shape[axis_name]
  b, t = q.shape[:2]
  sharded = jax.tree.map(lambda x: pad_time(x, n),
                         dict(q=q, k=k, v=v, beta=beta, log_decay=log_decay))
  if segment_ids is not None:
    sharded["segment_ids"] = jnp.pad(segment_ids, ((0, 0), (0, -t % n)), mode="edge")

  def local(sharded, replicated):
    return sequence_parallel_recurrence(**sharded, **replicated, axis_name=axis_name, scale=scale,
                                        mode=mode, chunk_size=chunk_size)

  o, state = _shard_time(local, sharded, dict(initial_state=initial_state), mesh=mesh,
                         axis_name=axis_name)
  return place_for_shard_map(o, mesh, axis_name, sharded_dim(q, mesh, axis_name))[:, :t], state


# ------------------------------------------------------------------------------------------------
# The short causal conv.


def sequence_parallel_conv1d(x, weight, *, axis_name: str, segment_ids=None, initial_state=None):
  """`causal_conv1d` of a time shard `x [B, L, C]` inside `shard_map` over `axis_name`: the taps
  before the shard read the previous shard's last K - 1 inputs (one ppermute), shard 0 reads
  `initial_state` (replicated `[B, K-1, C]`; zeros if None; unused with segment ids, as in
  `causal_conv1d`). Needs L >= K - 1 >= 1. Returns the local `y [B, L, C]`."""
  tail = weight.shape[0] - 1
  halo = from_previous_shard(x[:, x.shape[1] - tail:], axis_name)  # zeros on shard 0
  if initial_state is not None and segment_ids is None:
    halo = jnp.where(jax.lax.axis_index(axis_name) == 0, initial_state.astype(x.dtype), halo)
  ids = None
  if segment_ids is not None:
    previous_ids = from_previous_shard(segment_ids[:, segment_ids.shape[1] - tail:], axis_name)
    ids = jnp.concatenate([previous_ids, segment_ids], axis=1)
  y, _ = causal_conv1d(jnp.concatenate([halo, x], axis=1), weight, segment_ids=ids)
  return y[:, tail:]


def sequence_sharded_conv1d(x, weight, *, segment_ids=None, initial_state=None, mesh=None,
                            axis_name: str = SEQUENCE_AXIS):
  """`causal_conv1d` on global arrays with time sharded over `axis_name` of `mesh` (None: the
  current mesh) and a halo exchange; same arguments and results. Shards shorter than K - 1 (short
  prefills, one-token steps) fall back to `causal_conv1d` on the global arrays."""
  mesh = mesh_with_axis(mesh, axis_name)
  n = mesh.shape[axis_name]
  (b, t, channels), tail = x.shape, weight.shape[0] - 1
  if tail == 0 or -(-t // n) < tail:
    return causal_conv1d(x, weight, segment_ids=segment_ids, initial_state=initial_state)
  sharded = dict(x=pad_time(x, n), segment_ids=None if segment_ids is None else
                 pad_time(segment_ids, n))

  def local(sharded, replicated):
    return sequence_parallel_conv1d(**sharded, **replicated, axis_name=axis_name), None

  y, _ = _shard_time(local, sharded, dict(weight=weight, initial_state=initial_state), mesh=mesh,
                     axis_name=axis_name)
  y = place_for_shard_map(y, mesh, axis_name, sharded_dim(x, mesh, axis_name))[:, :t]
  before = (jnp.zeros((b, tail, channels), x.dtype) if initial_state is None
            else initial_state.astype(x.dtype))
  return y, jnp.concatenate([before, x[:, -tail:]], axis=1)[:, -tail:]
