"""Product-key retrieval (Lample et al. 2019, "Large Memory Layers with Product Keys") and the
weighted gather that reads the retrieved rows of a table (an "embedding bag" with per-row weights).

A product key is a pair of sub-keys: slot `i * n + j` has key `(K_a[i], K_b[j])`, and its score
for a query `(q_a, q_b)` is `q_a . K_a[i] + q_b . K_b[j]`. Top-k over all n^2 slots costs two top-k
over n and one over k^2 candidates.
"""

import jax
import jax.numpy as jnp


def _accumulator(*arrays) -> jnp.dtype:
  """float32 for low-precision inputs, float64 when an input is float64."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def product_topk(scores_a: jnp.ndarray, scores_b: jnp.ndarray,
                 k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Exact top-k of `scores_a[i] + scores_b[j]` over all `n_a * n_b` pairs.

  A pair whose `i` is not among the top-k of `scores_a` is beaten by the k pairs `(i', j)` with `i'`
  in that top-k (same for `j`), so the best k pairs lie in the k x k grid of per-half winners
  (Lample et al. 2019, sec. 3.2): searching that grid is exact, not an approximation.

  Args:
    scores_a: `[..., n_a]` sub-key scores of the first half.
    scores_b: `[..., n_b]` sub-key scores of the second half.
    k: how many slots to return; at most `min(n_a, n_b)`.

  Returns:
    `(scores [..., k], slots [..., k] int32)`, best first, with `slot = i * n_b + j`.
  """
  n_a, n_b = scores_a.shape[-1], scores_b.shape[-1]
  if not 0 < k <= min(n_a, n_b):
    raise ValueError(f"product_topk: k={k} must be in [1, {min(n_a, n_b)}] (the sub-key count)")
  top_a, i = jax.lax.top_k(scores_a, k)
  top_b, j = jax.lax.top_k(scores_b, k)
  grid_shape = (*top_a.shape[:-1], k * k)  # the k x k candidates, flattened
  grid_scores = (top_a[..., :, None] + top_b[..., None, :]).reshape(grid_shape)
  grid_slots = (i[..., :, None] * n_b + j[..., None, :]).reshape(grid_shape)
  scores, cell = jax.lax.top_k(grid_scores, k)
  return scores, jnp.take_along_axis(grid_slots, cell, axis=-1).astype(jnp.int32)


def product_key_search(queries: jnp.ndarray, keys: jnp.ndarray,
                       k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Multi-head product-key top-k.

  Args:
    queries: `[..., H, Dk]`; the first `Dk/2` features query the first sub-key set, the rest the
      second.
    keys: `[H, 2, n, Dk/2]` sub-keys per head and half.
    k: slots per head.

  Returns:
    `(scores [..., H, k] (float32 or wider), slots [..., H, k] int32)`, slots in `[0, n^2)`.
  """
  heads, halves, _, half_dim = keys.shape
  if halves != 2 or queries.shape[-2:] != (heads, 2 * half_dim):
    raise ValueError(f"product_key_search: queries {queries.shape} need trailing dims "
                     f"({heads}, {2 * half_dim}) to match keys {keys.shape} = [H, 2, n, Dk/2]")
  q_a, q_b = jnp.split(queries, 2, axis=-1)
  acc = _accumulator(queries, keys)
  score = lambda q, kk: jnp.einsum("...hd,hnd->...hn", q, kk.astype(q.dtype),
                                   preferred_element_type=acc)
  return product_topk(score(q_a, keys[:, 0]), score(q_b, keys[:, 1]), k)


def weighted_gather(table: jnp.ndarray, rows: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """`out[...] = sum_k weights[..., k] * table[rows[..., k]]`, accumulated in float32 (or wider).

  Written as gather, multiply and sum so that XLA fuses it into one reduction (no `[..., K, D]`
  intermediate, no one-hot); its gradient wrt `table` is a scatter-add, so repeated rows accumulate.

  Args:
    table: `[N, D]`.
    rows: `[..., K]` int in `[0, N)` (not checked: out-of-range rows are clipped).
    weights: `[..., K]`.

  Returns:
    `[..., D]` in the accumulation dtype.
  """
  acc = _accumulator(table, weights)
  picked = jnp.take(table, rows, axis=0, mode="clip").astype(acc)  # [..., K, D]
  return jnp.sum(picked * weights.astype(acc)[..., None], axis=-2)


def gathered_dot(table: jnp.ndarray, rows: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """`out[..., k] = table[rows[..., k]] . x[...]`, accumulated in float32 (or wider).

  Args:
    table: `[N, D]`.
    rows: `[..., K]` int in `[0, N)`.
    x: `[..., D]`.

  Returns:
    `[..., K]` in the accumulation dtype.
  """
  acc = _accumulator(table, x)
  picked = jnp.take(table, rows, axis=0, mode="clip").astype(acc)  # [..., K, D]
  return jnp.sum(picked * x.astype(acc)[..., None, :], axis=-1)
