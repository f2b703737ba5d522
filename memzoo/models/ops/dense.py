"""Contractions with their backward written as row-major matmuls.

Autodiff of a contraction leaves the weight gradient as a dot over the token axis of both
operands; XLA:CPU's layout assignment then transposes one of them and fuses whatever elementwise
backward produced it (a silu or norm derivative, a gate) into that transpose, which reads
`[tokens, width]` column by column and can cost as much as the matmul. Here the weight gradient is
`rows(x)^T @ rows(dy)` with only `x` transposed, and `dx = dy @ W^T`, so the elementwise chains
stay row-major.

`contract` is the dense layer's `x @ W` over trailing axes. `matmul` / `matmul_transposed` are the
batched products of per-(sequence, head) weights (the Titans memory MLP, `[B, H, I, O]`), where
autodiff produced the weight gradient transposed and added it to the scan's carry cotangent
column by column; `w @ x^T` replaces `x @ w^T` so that only the token-side operand is transposed.
"""

import functools
import math

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract(x, w, num_in: int):
  """`x [..., *in]`, `w [*in, *out]` -> `[..., *out]`, contracting the `num_in` trailing axes of x
  with the leading axes of w (`jnp.tensordot(x, w, num_in)`); x and w in one dtype."""
  return jnp.tensordot(x, w, axes=num_in)


def _forward(x, w, num_in):
  return jnp.tensordot(x, w, axes=num_in), (x, w)


def _backward(num_in, residuals, dy):
  x, w = residuals
  d_in = math.prod(w.shape[:num_in])
  w_rows = w.reshape(d_in, -1)
  dx = (dy.reshape(-1, w_rows.shape[1]) @ w_rows.T).reshape(x.shape)
  dw = (x.reshape(-1, d_in).T @ dy.reshape(-1, w_rows.shape[1])).reshape(w.shape)
  return dx, dw


contract.defvjp(_forward, _backward)


def _t(x):
  return jnp.swapaxes(x, -1, -2)


def _times_transposed(x, w):
  """`x @ w^T` as `(w @ x^T)^T`: only the token-side operand and the result are transposed."""
  return _t(w @ _t(x))


@jax.custom_vjp
def matmul(x, w):
  """Batched `x [..., N, I] @ w [..., I, O] -> [..., N, O]` (equal leading axes); backward
  `dw = x^T @ dy`, `dx = dy @ w^T`, with the small token-side operand transposed."""
  return x @ w


def _matmul_forward(x, w):
  return x @ w, (x, w)


def _matmul_backward(residuals, dy):
  x, w = residuals
  return _times_transposed(dy, w), _t(x) @ dy


matmul.defvjp(_matmul_forward, _matmul_backward)


@jax.custom_vjp
def matmul_transposed(x, w):
  """Batched `x [..., N, O] @ w^T -> [..., N, I]` for `w [..., I, O]`; backward `dw = dy^T @ x`,
  `dx = dy @ w`, both in w's own layout."""
  return _times_transposed(x, w)


def _matmul_transposed_forward(x, w):
  return matmul_transposed(x, w), (x, w)


def _matmul_transposed_backward(residuals, dy):
  x, w = residuals
  return dy @ w, _t(dy) @ x


matmul_transposed.defvjp(_matmul_transposed_forward, _matmul_transposed_backward)
