"""Blockwise feed-forward (Liu & Abbeel 2023, "Blockwise Parallel Transformer", section 3).

A position-wise layer applied to the whole sequence stores its hidden activations, `[B, T, hidden]`
(hidden is 4-8x d_model), for the backward. Applying it to time chunks inside a scan, each chunk
under `jax.checkpoint`, stores only the chunk inputs and recomputes one chunk's hidden activations
at a time: activation memory O(B * C * hidden) instead of O(B * T * hidden), same result.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from memzoo.models.ops.chunking import chunked_scan


def blockwise_feedforward(fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray,
                          chunk_size: int) -> jnp.ndarray:
  """Applies the position-wise `fn` to `x [B, T, ...]` in time chunks of `chunk_size` tokens.

  `fn` maps `[B, C, ...] -> [B, C, ...]` independently per position (an MLP, not a mixer); T need
  not be a multiple of the chunk size. Returns `fn(x)`.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be >= 1")
  remat_fn = jax.checkpoint(fn)
  _, y = chunked_scan(lambda carry, chunk, valid: (carry, remat_fn(chunk)), (), x, chunk_size)
  return y
