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
column by column; there `w @ x^T` replaces `x @ w^T` so that only the token-side operand is
transposed, except in `matmul`'s `dx`, which contracts the last axes of `dy` and `w` in one dot
(neither copied: `dy` comes out of an elementwise chain, which XLA would write out transposed, and
`w` is weight-sized).
`einsum` is any two-operand product whose operands' cotangents must come out in the operands' own
layouts (autodiff computes a cotangent as `dot(ct, other)` and transposes it when the operand's
contracted axis precedes its kept one, as for the `[C, P] @ [P, O]` products of the memory's dual
form; the transpose then lands in the elementwise backward that consumes it).

Low precision: `dot` accumulates in float32 and rounds the result to the inputs' dtype, as bf16
training does on every backend. On CPU it also decides the speed: XLA:CPU (jax 0.10.2) runs a bf16
dot with a float32 result on YNNPACK's AMX kernels (600-1,300 GFLOP/s against ~270-315 in float32
on the 2-core Xeon of experiments/bench) but only in the plain `[M, K] @ [K, N]` layout; a bf16
result, or a transposed operand, falls back to float32 at float32 speed. So the backward passes
of `contract` and ops/swiglu.py transpose their 16-bit operands physically (`transposed`).
"""

import functools
import math

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract(x, w, num_in: int):
  """`x [..., *in]`, `w [*in, *out]` -> `[..., *out]`, contracting the `num_in` trailing axes of x
  with the leading axes of w (`jnp.tensordot(x, w, num_in)`); x and w in one dtype, accumulated in
  float32."""
  return _forward(x, w, num_in)[0]


def dot(a, b):
  """`a [..., M, K] @ b [..., K, N]` accumulated in float32 (float64 stays float64), returned in
  a's dtype."""
  accumulate = jnp.promote_types(a.dtype, jnp.float32)
  return jnp.matmul(a, b, preferred_element_type=accumulate).astype(a.dtype)


def transposed(a):
  """`a.T` of a 2-D array; a 16-bit one on CPU is written out row-major (flattened behind an
  optimization barrier, which layout assignment cannot turn into a transposed layout) so that
  `dot` keeps YNNPACK's fast kernels (module doc). Elsewhere a free layout change."""
  if a.dtype.itemsize > 2 or jax.default_backend() != "cpu":
    return a.T
  return jax.lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[::-1])


def _forward(x, w, num_in):
  d_in = math.prod(w.shape[:num_in])
  y = dot(x.reshape(-1, d_in), w.reshape(d_in, -1))
  return y.reshape(*x.shape[:x.ndim - num_in], *w.shape[num_in:]), (x, w)


def _backward(num_in, residuals, dy):
  x, w = residuals
  d_in = math.prod(w.shape[:num_in])
  w_rows = w.reshape(d_in, -1)
  dy_rows = dy.reshape(-1, w_rows.shape[1])
  dx = dot(dy_rows, transposed(w_rows)).reshape(x.shape)
  dw = dot(transposed(x.reshape(-1, d_in)), dy_rows).reshape(w.shape)
  return dx, dw


contract.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum(spec: str, x, y):
  """`jnp.einsum(spec, x, y)` for a two-operand `spec` with an explicit output ("ij,jk->ik"), whose
  cotangents are einsums ordered so that each comes out of its dot in the operand's layout."""
  return jnp.einsum(spec, x, y)


def _einsum_forward(spec, x, y):
  return jnp.einsum(spec, x, y), (x, y)


def _cotangent(target: str, ct_spec: str, ct, other_spec: str, other):
  """`einsum(ct_spec, other_spec -> target)`, with the operand that owns target's first axis that
  is not shared by both (a dot puts the lhs's free axes first) as the lhs."""
  first_free = next((a for a in target if not (a in ct_spec and a in other_spec)), None)
  if first_free is not None and first_free in other_spec:
    return jnp.einsum(f"{other_spec},{ct_spec}->{target}", other, ct)
  return jnp.einsum(f"{ct_spec},{other_spec}->{target}", ct, other)


def _einsum_backward(spec, residuals, ct):
  x, y = residuals
  operands, out = spec.split("->")
  x_spec, y_spec = operands.split(",")
  return (_cotangent(x_spec, out, ct, y_spec, y).astype(x.dtype),
          _cotangent(y_spec, out, ct, x_spec, x).astype(y.dtype))


einsum.defvjp(_einsum_forward, _einsum_backward)


def _t(x):
  return jnp.swapaxes(x, -1, -2)


def _times_transposed(x, w):
  """`x @ w^T` as `(w @ x^T)^T`: only the token-side operand and the result are transposed."""
  return _t(w @ _t(x))


@jax.custom_vjp
def matmul(x, w):
  """Batched `x [..., N, I] @ w [..., I, O] -> [..., N, O]` (equal leading axes); backward
  `dw = x^T @ dy` (x, a stored input, transposed) and `dx = dy @ w^T` as one dot over the last
  axes of both: dy comes out of an activation's backward, which XLA would write out transposed,
  element by element, for `w @ dy^T`, and a transposed copy of w cost the Titans memory's backward
  a weight-sized strided copy per product (-6% of its fwd+bwd without them)."""
  return x @ w


def _matmul_forward(x, w):
  return x @ w, (x, w)


def _matmul_backward(residuals, dy):
  x, w = residuals
  return jnp.einsum("...no,...io->...ni", dy, w), _t(x) @ dy


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
