"""Ring attention (Liu, Zaharia & Abbeel 2023) and sequence-sharded KV-cache attention.

The time axis is sharded over a mesh axis (`"sequence"`). In `ring_attention` every device keeps its
queries and passes its key/value chunk to the next device (`lax.ppermute`) N - 1 times, folding each
visiting chunk into a running online softmax with the blockwise machinery of ops/attention.py. The
backward (custom VJP) recomputes per block from the saved log-sum-exp and rotates (k, v, dk, dv), so
dk and dv arrive back at their owner after N steps. Chunk and block pairs that the mask hides are
skipped.

With causal masking the wrapper `ring_self_attention` balances the work over devices by reordering
the shards to the zigzag layout (ops/sequence_parallel.py).

`sharded_cache_attention` is the decode form: replicated queries, a KV cache sharded over the axis,
and one all-reduce of the online-softmax statistics (no ring needed for a handful of queries).
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from memzoo.models.ops.attention import (Softmax, Tokens, attend_chunk, attend_chunk_grads,
                                         block_visible, finish_softmax, init_softmax, make_tokens,
                                         match_vma, merge_blocks, output_delta, split_blocks,
                                         stats_to_tokens)
from memzoo.models.ops.chunking import from_chunks, pad_time
from memzoo.models.ops.sequence_parallel import (SEQUENCE_AXIS, mesh_with_axis,
                                                 place_for_shard_map, sharded_dim, zigzag_shard,
                                                 zigzag_unshard)

# ------------------------------------------------------------------------------------------------
# The ring.


def _rotate(x, axis_name: str):
  """Sends every leaf of `x` from shard i to shard i + 1 (mod N)."""
  n = jax.lax.axis_size(axis_name)
  perm = [(i, (i + 1) % n) for i in range(n)]
  return jax.tree.map(lambda a: jax.lax.ppermute(a, axis_name, perm), x)


def _chunk_visible(qt: Tokens, kt: Tokens, mask) -> jnp.ndarray:
  """`block_visible` for whole (blocked) chunks."""
  return block_visible(jax.tree.map(from_chunks, qt), jax.tree.map(from_chunks, kt), **mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9))
def _ring(q, k, v, tokens, axis_name, causal, window, scale, block_q, block_k):
  return _ring_fwd(q, k, v, tokens, axis_name, causal, window, scale, block_q, block_k)[0]


def _ring_fwd(q, k, v, tokens, axis_name, causal, window, scale, block_q, block_k):
  """Local `q [B, L, K, G, D]`, `k, v [B, L, K, D]` -> local `out [B, L, K, G, Dv]`."""
  mask = dict(causal=causal, window=window)
  qb, qt = split_blocks((q, tokens), block_q)

  def attend(state, kv):
    kb, vb, kt = kv
    fold = lambda s: attend_chunk(s, qb, kb, vb, qt, kt, scale=scale, **mask)
    return jax.lax.cond(_chunk_visible(qt, kt, mask), fold, lambda s: s, state)

  def ring_step(carry, _):
    state, kv = carry
    next_kv = _rotate(kv, axis_name)  # issued before the compute so the transfer can overlap it
    return (attend(state, kv), next_kv), None

  kv = match_vma(split_blocks((k, v, tokens), block_k), k)  # rotating values vary by shard
  state = match_vma(init_softmax(qb, v.shape[-1]), q, k, v)
  n = jax.lax.axis_size(axis_name)
  (state, kv), _ = jax.lax.scan(ring_step, (state, kv), length=n - 1)
  out, lse = finish_softmax(attend(state, kv))
  out = merge_blocks(stats_to_tokens(out), q.shape[1]).astype(q.dtype)
  return out, (q, k, v, tokens, out, lse)


def _ring_bwd(axis_name, causal, window, scale, block_q, block_k, residuals, do):
  q, k, v, tokens, out, lse = residuals
  mask = dict(causal=causal, window=window)
  qb, qt, dob, outb = split_blocks((q, tokens, do, out), block_q)
  delta = output_delta(dob, outb)

  def grads(kv):
    kb, vb, kt = kv
    compute = lambda _: attend_chunk_grads(qb, kb, vb, dob, lse, delta, qt, kt, scale=scale,
                                           **mask)
    zeros = match_vma(tuple(jnp.zeros(a.shape, jnp.float32) for a in (qb, kb, vb)),
                      qb, kb, vb, dob, lse)
    return jax.lax.cond(_chunk_visible(qt, kt, mask), compute, lambda _: zeros, None)

  def ring_step(carry, _):
    dq, kv, dkv = carry
    next_kv = _rotate(kv, axis_name)
    dq_c, dk_c, dv_c = grads(kv)
    dkv = _rotate((dkv[0] + dk_c, dkv[1] + dv_c), axis_name)  # dk, dv travel with their k, v
    return (dq + dq_c, next_kv, dkv), None

  kv = match_vma(split_blocks((k, v, tokens), block_k), k)  # rotating values vary by shard
  dq, dk, dv = match_vma(tuple(jnp.zeros(a.shape, jnp.float32) for a in (qb,) + kv[:2]),
                         q, k, v, do)
  n = jax.lax.axis_size(axis_name)
  (dq, kv, (dk, dv)), _ = jax.lax.scan(ring_step, (dq, kv, (dk, dv)), length=n - 1)
  dq_c, dk_c, dv_c = grads(kv)
  dk, dv = _rotate((dk + dk_c, dv + dv_c), axis_name)  # the last hop home
  dq = merge_blocks(dq + dq_c, q.shape[1]).astype(q.dtype)
  dk, dv = merge_blocks((dk, dv), k.shape[1])
  return dq, dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


def _group_heads(q, kv_heads: int):
  if q.shape[2] % kv_heads:
    raise ValueError(f"query heads {q.shape[2]} not a multiple of kv heads {kv_heads}")
  b, t, h, d = q.shape
  return q.reshape(b, t, kv_heads, h // kv_heads, d)


def ring_attention(q, k, v, *, axis_name: str, causal: bool = True, segment_ids=None,
                   window: int | None = None, scale: float | None = None, positions=None,
                   block_q: int = 512, block_k: int = 512) -> jnp.ndarray:
  """Self-attention over a sequence sharded on `axis_name`; call inside `shard_map`.

  Args:
    q: local `[B, L, H, D]`; k, v: local `[B, L, K, Dv]` (the same tokens), K divides H.
    axis_name: the mesh axis the time axis is sharded over.
    causal, window, scale: as in `ops.attention.attention`.
    segment_ids: local `[B, L]` packed-document ids.
    positions: local `[B, L]` global positions of the tokens; default contiguous shards
      (`axis_index * L + arange(L)`). A load-balanced layout passes its own.
    block_q, block_k: blocks of the per-device blockwise attention (need not divide L).

  Returns:
    local `[B, L, H, Dv]` in q's dtype.
  """
  b, length = q.shape[:2]
  if positions is None:
    positions = jax.lax.axis_index(axis_name) * length + jnp.arange(length, dtype=jnp.int32)
  tokens = make_tokens(jnp.broadcast_to(positions, (b, length)), segment_ids)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  out = _ring(_group_heads(q, k.shape[2]), k, v, tokens, axis_name, causal, window, scale,
              block_q, block_k)
  return out.reshape(b, length, q.shape[2], v.shape[-1])


def ring_self_attention(q, k, v, *, mesh=None, axis_name: str = SEQUENCE_AXIS,
                        causal: bool = True, segment_ids=None, window: int | None = None,
                        scale: float | None = None, load_balance: bool = True,
                        block_q: int = 512, block_k: int = 512) -> jnp.ndarray:
  """`ring_attention` on global arrays: shards time over `axis_name` of `mesh` with `shard_map`.

  Only `axis_name` becomes manual; other mesh axes (batch, heads) keep their sharding. T need not be
  divisible by the shard count: the tail is padded as its own segment. With `load_balance` (used
  when causal) the shards are reordered to the zigzag layout and back inside the `shard_map`.

  Args:
    q: `[B, T, H, D]`; k, v: `[B, T, K, Dv]`; segment_ids: `[B, T]` or None.
    mesh: a `Mesh`/`AbstractMesh` with `axis_name`; None means the current mesh (`jax.set_mesh`).
    Others: as in `ring_attention`.

  Returns:
    `[B, T, H, Dv]`, equal to `attention(q, k, v, causal=causal, segment_ids=segment_ids, ...)`.
  """
  mesh = mesh_with_axis(mesh, axis_name)
  n = mesh.shape[axis_name]
  balance = load_balance and causal and n > 1
  b, t = q.shape[:2]
  out_dim = sharded_dim(q, mesh, axis_name)
  multiple = 2 * n if balance else n
  if t % multiple:  # pad time; the padding forms its own segment, so nothing real sees it
    segment_ids = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids
    segment_ids = pad_time(segment_ids, multiple, jnp.max(segment_ids) + 1)
    q, k, v = (pad_time(x, multiple) for x in (q, k, v))
  positions = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), q.shape[:2])

  def local(q, k, v, segment_ids, positions):
    if balance:
      q, k, v, segment_ids, positions = zigzag_shard((q, k, v, segment_ids, positions), axis_name)
    out = ring_attention(q, k, v, axis_name=axis_name, causal=causal, segment_ids=segment_ids,
                         window=window, scale=scale, positions=positions, block_q=block_q,
                         block_k=block_k)
    return zigzag_unshard(out, axis_name) if balance else out

  inputs = [place_for_shard_map(x, mesh, axis_name, 1) for x in (q, k, v, segment_ids, positions)]
  time_sharded = P(None, axis_name)
  out = jax.shard_map(local, mesh=mesh, in_specs=time_sharded, out_specs=time_sharded,
                      axis_names={axis_name})(*inputs)
  return place_for_shard_map(out, mesh, axis_name, out_dim)[:, :t]  # laid out like q


# ------------------------------------------------------------------------------------------------
# Decoding against a sequence-sharded KV cache.


def _all_reduce_softmax(state: Softmax, axis_name: str) -> Softmax:
  """Merges the per-shard online-softmax states of the same queries (rescale to the global max)."""
  m = jax.lax.pmax(state.m, axis_name)
  w = jnp.exp(state.m - m)
  return Softmax(m, jax.lax.psum(w * state.l, axis_name),
                 jax.lax.psum(w[..., None] * state.acc, axis_name))


def sharded_cache_attention(q, k_cache, v_cache, *, q_positions, kv_positions, mesh=None,
                            axis_name: str = SEQUENCE_AXIS, window: int | None = None,
                            scale: float | None = None, block_q: int = 512,
                            block_k: int = 512) -> jnp.ndarray:
  """Causal attention of a few new queries against a KV cache sharded over `axis_name` (decode).

  Each shard attends to its slice of the cache; one all-reduce merges the softmax statistics.

  Args:
    q: `[B, t, H, D]` (replicated over the axis); k_cache, v_cache: `[B, S, K, Dv]`, S divisible by
      the axis size; q_positions: `[B, t]`; kv_positions: `[B, S]` (unwritten slots must lie after
      every query position, so the causal mask hides them).

  Returns:
    `[B, t, H, Dv]` in q's dtype, equal to `attention(..., q_positions=..., kv_positions=...)`.
  """
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  n = mesh.shape[axis_name]
  if k_cache.shape[1] % n:
    raise ValueError(f"cache length {k_cache.shape[1]} not divisible by the {axis_name!r} axis "
                     f"size {n}; make max_len a multiple of {n}")
  b, t, h, _ = q.shape
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  mask = dict(causal=True, window=window)

  def local(q, k, v, q_positions, kv_positions):
    qb, qt = split_blocks((_group_heads(q, k.shape[2]), make_tokens(q_positions)), block_q)
    kb, vb, kt = split_blocks((k, v, make_tokens(kv_positions)), block_k)
    state = attend_chunk(init_softmax(qb, v.shape[-1]), qb, kb, vb, qt, kt, scale=scale, **mask)
    out, _ = finish_softmax(_all_reduce_softmax(state, axis_name))
    return merge_blocks(stats_to_tokens(out), t).reshape(b, t, h, v.shape[-1]).astype(q.dtype)

  q_positions = jnp.broadcast_to(q_positions, (b, t))
  kv_positions = jnp.broadcast_to(kv_positions, k_cache.shape[:2])
  inputs = [place_for_shard_map(x, mesh, axis_name, dim) for x, dim in
            ((q, None), (k_cache, 1), (v_cache, 1), (q_positions, None), (kv_positions, 1))]
  cache, replicated = P(None, axis_name), P()
  return jax.shard_map(local, mesh=mesh, in_specs=(replicated, cache, cache, replicated, cache),
                       out_specs=replicated, axis_names={axis_name})(*inputs)


def sharded_cache_write(cache, update, start, *, mesh=None, axis_name: str = SEQUENCE_AXIS):
  """`lax.dynamic_update_slice_in_dim(cache, update, start, 1)` for a cache sharded over
  `axis_name` along dimension 1: each shard writes the slots of `update` that fall in its slice.

  Args:
    cache: `[B, S, ...]`, S divisible by the axis size; update: `[B, t, ...]` (replicated over the
      axis); start: scalar int, the first slot written.

  Returns:
    The new cache, sharded over `axis_name` along dimension 1.
  """
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh

  def local(cache, update, start):
    length, t = cache.shape[1], update.shape[1]
    index = jax.lax.axis_index(axis_name) * length + jnp.arange(length) - start  # into update
    hit = ((index >= 0) & (index < t)).reshape((1, length) + (1,) * (cache.ndim - 2))
    return jnp.where(hit, jnp.take(update, jnp.clip(index, 0, t - 1), axis=1), cache)

  inputs = [place_for_shard_map(x, mesh, axis_name, dim) for x, dim in ((cache, 1), (update, None),
                                                          (start, None))]
  return jax.shard_map(local, mesh=mesh, in_specs=(P(None, axis_name), P(), P()),
                       out_specs=P(None, axis_name), axis_names={axis_name})(*inputs)
