"""The chunkwise machinery shared by the recurrent ops (linear attention, delta rule, memory).

A chunked op splits time into chunks of C tokens, does the work inside a chunk in parallel
(matmuls), and carries a state from chunk to chunk with `lax.scan`. This module owns the parts that
do not depend on the recurrence: padding T up to a multiple of C, moving the chunk axis to the
front, the scan, and cutting the padding off again. Padded tokens are flagged by `valid` so that
each op can make them neutral (they must not change the state).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


def pad_time(x: jnp.ndarray, multiple: int, value=0) -> jnp.ndarray:
  """Pads axis 1 (time) of `x` up to a multiple of `multiple`."""
  pad = -x.shape[1] % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def to_chunks(x: jnp.ndarray, chunk_size: int) -> jnp.ndarray:
  """`[B, T, ...]` (T a multiple of C) -> `[N, B, C, ...]`, chunk axis first for `lax.scan`."""
  b, t = x.shape[:2]
  x = x.reshape(b, t // chunk_size, chunk_size, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def from_chunks(x: jnp.ndarray) -> jnp.ndarray:
  """Inverse of `to_chunks`: `[N, B, C, ...]` -> `[B, N*C, ...]`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def heads_to_rows(x: jnp.ndarray) -> jnp.ndarray:
  """`[B, T, H, ...]` -> `[B*H, T, ...]`: one row per (sequence, head), row index `b * H + h`."""
  b, t, h = x.shape[:3]
  return jnp.moveaxis(x, 2, 1).reshape(b * h, t, *x.shape[3:])


def rows_to_heads(x: jnp.ndarray, heads: int) -> jnp.ndarray:
  """Inverse of `heads_to_rows`: `[B*H, T, ...]` -> `[B, T, H, ...]`."""
  x = x.reshape(x.shape[0] // heads, heads, *x.shape[1:])
  return jnp.moveaxis(x, 1, 2)


def prefix_sum(x: jnp.ndarray) -> jnp.ndarray:
  """Inclusive cumulative sum over the token axis (2) of `[N, Z, C, ...]` chunks.

  Floats: a product with the lower-triangular ones matrix at full precision, which adds the terms
  in order (on XLA:CPU bitwise the sequential sum, whose differences G_i - G_j near the diagonal
  are the most accurate) and is ~8x faster there than `jnp.cumsum`'s reduce-window, which XLA
  splits in two and re-evaluates inside every fusion that reads the sum. Integers: an associative
  scan (exact).
  """
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jax.lax.associative_scan(jnp.add, x, axis=2)
  lower = jnp.tril(jnp.ones((x.shape[2], x.shape[2]), x.dtype))
  return jnp.einsum("ij,nzj...->nzi...", lower, x, precision=jax.lax.Precision.HIGHEST)


def split_chunks(inputs: PyTree, chunk_size: int, *,
                 pad_values: PyTree | None = None) -> tuple[PyTree, jnp.ndarray]:
  """Pads a pytree of `[B, T, ...]` arrays to a multiple of C and cuts them into `[N, B, C, ...]`.

  Returns `(chunks, valid)` with `valid [N, B, C]` bool, False on the padding after the last token.
  `pad_values` is an optional pytree (same structure as `inputs`) of scalars; zeros by default.
  """
  batch, length = jax.tree.leaves(inputs)[0].shape[:2]
  if pad_values is None:
    pad_values = jax.tree.map(lambda _: 0, inputs)
  padded = jax.tree.map(lambda x, v: pad_time(x, chunk_size, v), inputs, pad_values)
  valid = pad_time(jnp.ones((batch, length), bool), chunk_size, False)
  return jax.tree.map(lambda x: to_chunks(x, chunk_size), (padded, valid))


def merge_chunks(outputs: PyTree, length: int) -> PyTree:
  """Inverse of `split_chunks`: `[N, B, C, ...]` leaves -> `[B, length, ...]`, padding removed."""
  return jax.tree.map(lambda y: from_chunks(y)[:, :length], outputs)


def scan_chunks(step: Callable[[PyTree, PyTree, jnp.ndarray], tuple[PyTree, PyTree]],
                carry: PyTree, chunks: PyTree, valid: jnp.ndarray, *,
                unroll: int = 1) -> tuple[PyTree, PyTree]:
  """`lax.scan` of `step(carry, chunk, valid) -> (carry, outputs)` over already split chunks.

  For ops that do the intra-chunk work for all chunks at once (batched over N) and only carry the
  state sequentially. `chunks` and `valid` come from `split_chunks`; outputs stay `[N, B, C, ...]`.
  """
  def body(c, chunk_and_valid):
    chunk, v = chunk_and_valid
    return step(c, chunk, v)

  return jax.lax.scan(body, carry, (chunks, valid), unroll=unroll)


def chunked_scan(step: Callable[[PyTree, PyTree, jnp.ndarray], tuple[PyTree, PyTree]],
                 carry: PyTree, inputs: PyTree, chunk_size: int, *,
                 pad_values: PyTree | None = None, unroll: int = 1) -> tuple[PyTree, PyTree]:
  """Runs `step` over consecutive chunks of the time axis, carrying a state.

  Args:
    step: `(carry, chunk, valid) -> (carry, outputs)`. `chunk` has the structure of `inputs` with
      leaves `[B, C, ...]`; `valid` is `[B, C]` bool, False on the padding after the last token;
      `outputs` is a pytree of `[B, C, ...]` arrays.
    carry: the initial state (any pytree).
    inputs: pytree of `[B, T, ...]` arrays that share B and T. T need not be a multiple of C.
    chunk_size: C.
    pad_values: optional pytree (same structure as `inputs`) of scalars to pad each leaf with; zeros
      by default.
    unroll: passed to `lax.scan`.

  Returns:
    `(final_carry, outputs)` with outputs `[B, T, ...]`, the padding removed.
  """
  length = jax.tree.leaves(inputs)[0].shape[1]
  chunks, valid = split_chunks(inputs, chunk_size, pad_values=pad_values)
  carry, outputs = scan_chunks(step, carry, chunks, valid, unroll=unroll)
  return carry, merge_chunks(outputs, length)
