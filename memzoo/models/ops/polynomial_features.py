"""Polynomial feature maps of keys and queries (ATLAS, Behrouz et al. 2025, §3.1).

`phi_p(x) = [a_0, a_1 x, a_2 vec(x x^T), ..., a_p vec(x^{(x)p})]` spans every monomial of degree
<= p (ATLAS's `[x^beta]_{|beta| <= p}`, with repeats), so a memory over phi(k) has capacity
O(d^p). Inner products give the kernel `phi(q) . phi(k) = sum_i a_i^2 (q . k)^i`; with
`a_i = 1/sqrt(i!)` that is the degree-p Taylor expansion of `exp(q . k)`, softmax attention's
kernel.
"""

import math

import jax.numpy as jnp


def feature_dim(dim: int, degree: int) -> int:
  """Width of `phi_p` for inputs of width `dim`: `sum_{i<=p} dim^i`."""
  return sum(dim ** i for i in range(degree + 1))


def taylor_coefficients(degree: int) -> jnp.ndarray:
  """`a_i = 1/sqrt(i!)`, i = 0..degree: the exponential kernel's Taylor weights."""
  return jnp.array([1.0 / math.sqrt(math.factorial(i)) for i in range(degree + 1)])


def polynomial_features(x: jnp.ndarray, coefficients: jnp.ndarray) -> jnp.ndarray:
  """`x [..., d] -> phi(x) [..., feature_dim(d, p)]` with `coefficients [p + 1]` (a_0..a_p)."""
  degree = coefficients.shape[0] - 1
  coefficients = coefficients.astype(x.dtype)
  power = jnp.ones(x.shape[:-1] + (1,), x.dtype)
  features = [coefficients[0] * power]
  for i in range(1, degree + 1):
    power = (power[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (-1,))
    features.append(coefficients[i] * power)
  return jnp.concatenate(features, axis=-1)
