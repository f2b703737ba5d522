"""SwiGLU feed-forward `(silu(x W_gate) * (x W_up)) W_down` (Shazeer 2020) with its backward
written out.

Autodiff of `silu` leaves XLA an elementwise chain (sigmoid, its derivative, two products) that it
fuses into the transposes feeding the weight-gradient matmuls; on CPU that fusion reads
`[T, hidden]` column by column and costs as much as a matmul. Here the backward computes the gate
derivative once, row-major, and the weight gradients as plain `x^T @ dh` matmuls. Every product
accumulates in float32 (`dense.dot`; its doc says why 16-bit operands are transposed physically).
"""

import jax

from memzoo.models.ops.dense import dot, transposed


@jax.custom_vjp
def swiglu(x, w_gate, w_up, w_down):
  """`x [..., d]`, `w_gate, w_up [d, hidden]`, `w_down [hidden, d_out]` -> `[..., d_out]`, all in
  one dtype (the caller casts)."""
  return _forward(x, w_gate, w_up, w_down)[0]


def _forward(x, w_gate, w_up, w_down):
  gate, up = dot(x, w_gate), dot(x, w_up)
  return dot(jax.nn.silu(gate) * up, w_down), (x, gate, up, w_gate, w_up, w_down)


def _backward(residuals, dy):
  x, gate, up, w_gate, w_up, w_down = residuals
  sig = jax.nn.sigmoid(gate)
  act = gate * sig
  d_hidden = dot(dy, transposed(w_down))
  d_up = d_hidden * act
  d_gate = d_hidden * up * (sig * (1 + gate * (1 - sig)))  # silu'(g) = s + g s (1 - s)
  rows = lambda a: a.reshape(-1, a.shape[-1])
  x_t = transposed(rows(x))
  return (dot(d_gate, transposed(w_gate)) + dot(d_up, transposed(w_up)), dot(x_t, rows(d_gate)),
          dot(x_t, rows(d_up)), dot(transposed(rows(act * up)), rows(dy)))


swiglu.defvjp(_forward, _backward)
