"""The chunkwise machinery shared by every recurrent op (linear attention, delta rule, neural memory).

A chunked op splits time into chunks of C tokens, does the work inside a chunk in parallel (matmuls),
and carries a state from chunk to chunk with `lax.scan`. This module owns the parts that do not depend
on the recurrence: padding T up to a multiple of C, moving the chunk axis to the front, the scan, and
cutting the padding off again. Padded tokens are flagged by `valid` so that each op can make them
neutral (they must not change the state).
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
  leaves = jax.tree.leaves(inputs)
  batch, length = leaves[0].shape[:2]
  if pad_values is None:
    pad_values = jax.tree.map(lambda _: 0, inputs)
  padded = jax.tree.map(lambda x, v: pad_time(x, chunk_size, v), inputs, pad_values)
  valid = pad_time(jnp.ones((batch, length), bool), chunk_size, False)
  xs = jax.tree.map(lambda x: to_chunks(x, chunk_size), (padded, valid))

  def body(c, chunk_and_valid):
    chunk, v = chunk_and_valid
    return step(c, chunk, v)

  carry, outputs = jax.lax.scan(body, carry, xs, unroll=unroll)
  outputs = jax.tree.map(lambda y: from_chunks(y)[:, :length], outputs)
  return carry, outputs
