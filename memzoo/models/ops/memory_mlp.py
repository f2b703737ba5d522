"""The memory network of a test-time-trained memory (Titans, ATLAS): an MLP whose weights are state.

A memory of depth L maps `x [.., Din] -> y [.., Dout]` with one weight matrix per layer, stored per
batch element and head as `[B, H, D_in_l, D_out_l]`; layers are joined by an elementwise activation
and, optionally, the input is added to the output (`y = x + MLP(x)`, ATLAS's memory). L = 1 without
activation or residual is the linear (matrix) memory `y = x^T M`.

The gradient of `1/2 ||M(k) - v||^2` with respect to layer l is an outer product
`a_{l-1} delta_l^T` of the layer's input and the loss gradient at its pre-activation. Keeping the
gradient in this factored form is what lets the chunked memory op read from per-token weights
without building them (the "dual form" of TTT, Sun et al. 2024, §2.7).
"""

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp

from memzoo.models.ops import dense

Weights = tuple[jnp.ndarray, ...]

ACTIVATIONS = {"gelu": partial(jax.nn.gelu, approximate=False), "silu": jax.nn.silu}


def activation_fn(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r} is not supported; use one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def layer_shapes(d_in: int, d_out: int, depth: int, expansion: float) -> list[tuple[int, int]]:
  """`[(D_in_l, D_out_l)]` of a depth-`depth` memory whose hidden width is `expansion * d_in`."""
  if depth < 1:
    raise ValueError(f"memory depth must be >= 1, got {depth}")
  hidden = max(1, int(round(expansion * d_in)))
  dims = [d_in] + [hidden] * (depth - 1) + [d_out]
  return list(zip(dims[:-1], dims[1:]))


def _matmul(x, w):
  """`x [B, H, N, I] @ w [B, H, I, O] -> [B, H, N, O]`."""
  return dense.matmul(x, w)


def forward(weights: Weights, x: jnp.ndarray, activation: str, residual: bool) -> jnp.ndarray:
  """`M(x)` for `x [B, H, N, Din]` with shared weights `[B, H, I, O]` per layer."""
  act = activation_fn(activation)
  z = x
  for i, w in enumerate(weights):
    z = _matmul(z, w)
    if i < len(weights) - 1:
      z = act(z)
  return z + x if residual else z


def forward_per_token(weights: Weights, x: jnp.ndarray, activation: str,
                      residual: bool) -> jnp.ndarray:
  """`M_n(x_n)` for `x [B, H, N, Din]` with a weight copy per token, `[B, H, N, I, O]` per layer."""
  act = activation_fn(activation)
  z = x
  for i, w in enumerate(weights):
    z = jnp.einsum("bhni,bhnio->bhno", z, w)
    if i < len(weights) - 1:
      z = act(z)
  return z + x if residual else z


def forward_flops(shapes: Sequence[tuple[int, int]], rows: int) -> int:
  """Matmul FLOPs of `forward` (and of `forward_per_token`) on `rows` inputs (batch x heads x N) of
  a memory with `layer_shapes` `shapes`."""
  return 2 * rows * sum(i * o for i, o in shapes)


def sample_gradient_flops(shapes: Sequence[tuple[int, int]], rows: int) -> int:
  """Matmul FLOPs of `sample_gradients` on `rows` keys: the forward pass and the backward one
  through every layer but the first."""
  return forward_flops(shapes, rows) + forward_flops(shapes[1:], rows)


def newton_schulz_flops(shapes: Sequence[tuple[int, int]], steps: int, rows: int) -> int:
  """Matmul FLOPs of `newton_schulz` on `rows` weight sets of `shapes`: per step and `[m, n]`
  matrix (m <= n, after the transpose), `x x^T` and `(..) @ x` at `2 m^2 n` each and `gram @ gram`
  at `2 m^3`."""
  per_step = sum(4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3 for s in shapes)
  return rows * steps * per_step


def sample_gradients(weights: Weights, keys: jnp.ndarray, values: jnp.ndarray, activation: str,
                     residual: bool) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
  """Per-token gradients of `1/2 ||M(k_n) - v_n||^2`, as outer-product factors.

  Args:
    weights: per layer `[B, H, I, O]`.
    keys: `[B, H, N, Din]`; values: `[B, H, N, Dout]`.

  Returns:
    `(inputs, deltas)`: per layer `[B, H, N, I]` and `[B, H, N, O]`; token n's gradient for layer l
    is `inputs[l][n] (outer) deltas[l][n]`.
  """
  act = activation_fn(activation)
  inputs, preacts = [], []
  z = keys
  for i, w in enumerate(weights):
    inputs.append(z)
    z = _matmul(z, w)
    preacts.append(z)
    if i < len(weights) - 1:
      z = act(z)
  delta = (z + keys if residual else z) - values
  deltas = [delta]
  for i in range(len(weights) - 1, 0, -1):
    back = dense.matmul_transposed(delta, weights[i])
    delta = jax.vjp(act, preacts[i - 1])[1](back)[0]
    deltas.insert(0, delta)
  return inputs, deltas


def gradient_norms(inputs: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Frobenius norm of each token's full gradient, `[B, H, N]` (`||a d^T|| = ||a|| ||d||`)."""
  sq = sum(jnp.sum(a * a, -1) * jnp.sum(d * d, -1) for a, d in zip(inputs, deltas))
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def soft_clip_factors(norms: jnp.ndarray, max_norm: float) -> jnp.ndarray:
  """Factor that soft-clips a gradient of norm n to `max_norm * tanh(n / max_norm)`."""
  positive = norms > 0
  safe = jnp.where(positive, norms, 1.0)
  return jnp.where(positive, max_norm * jnp.tanh(safe / max_norm) / safe, 1.0)


def dual_read(queries: jnp.ndarray, coefs: Sequence[jnp.ndarray], bases: Sequence[Weights],
              mixing: jnp.ndarray, inputs: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
              activation: str, residual: bool) -> jnp.ndarray:
  """Reads `M_c(q_c)` where token c's weights are, per layer l,

      W_c^l = sum_j coefs[j][c] * bases[j][l]  -  sum_p mixing[c, p] * inputs[l][p] deltas[l][p]^T,

  without building `W_c`:
  `z^T W_c = sum_j coefs[j][c] (z^T B_j) - sum_p mixing[c, p] (z . a_p) d_p`.

  Args:
    queries: `[B, H, C, Din]`.
    coefs: scalars per token, `[B, H, C]` each; bases: the matching weight sets, per layer
      `[B, H, I, O]`.
    mixing: `[B, H, C, P]`; inputs, deltas: per layer `[B, H, P, I]` / `[B, H, P, O]`.

  Returns:
    `[B, H, C, Dout]`.
  """
  act = activation_fn(activation)
  z = queries
  for i in range(len(inputs)):
    h = sum(c[..., None] * _matmul(z, base[i]) for c, base in zip(coefs, bases))
    scores = mixing * dense.einsum("bhci,bhpi->bhcp", z, inputs[i])
    z = h - dense.einsum("bhcp,bhpo->bhco", scores, deltas[i])
    if i < len(inputs) - 1:
      z = act(z)
  return z + queries if residual else z


def newton_schulz(x: jnp.ndarray, steps: int, eps: float = 1e-7) -> jnp.ndarray:
  """Approximate orthogonalisation `U V^T` of `x [..., m, n]` (x = U S V^T) by the quintic
  Newton-Schulz iteration of Muon (Jordan et al. 2024), coefficients (3.4445, -4.7750, 2.0315).
  Used by ATLAS (Behrouz et al. 2025, §4) on the memory's momentum."""
  a, b, c = 3.4445, -4.7750, 2.0315
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  norm = jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
  x = x / (norm + eps)
  for _ in range(steps):
    gram = x @ jnp.swapaxes(x, -1, -2)
    x = a * x + (b * gram + c * gram @ gram) @ x
  return jnp.swapaxes(x, -1, -2) if transpose else x
