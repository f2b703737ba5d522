"""`ops.dense`: the hand-written backwards == autodiff of the plain products, in float64; in bf16,
float32 accumulation and every dot on bf16 operands (the CPU fast path)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.dense import contract, einsum, matmul, matmul_transposed
from memzoo.models.ops.swiglu import swiglu

_dims = st.lists(st.integers(1, 6), min_size=1, max_size=2)


@settings(deadline=None, max_examples=16)
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=3), inner=_dims, outer=_dims,
       seed=st.integers(0, 2 ** 16))
def test_matches_tensordot_autodiff_float64(lead, inner, outer, seed):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((*lead, *inner)))
    w = jnp.asarray(rng.standard_normal((*inner, *outer)))
    cotangent = jnp.asarray(rng.standard_normal((*lead, *outer)))
    got, got_vjp = jax.vjp(lambda x, w: contract(x, w, len(inner)), x, w)
    want, want_vjp = jax.vjp(lambda x, w: jnp.tensordot(x, w, len(inner)), x, w)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("x", "w"), got_vjp(cotangent), want_vjp(cotangent)):
      assert a.shape == b.shape, name
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)


@settings(deadline=None, max_examples=12)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=st.integers(1, 7),
       i=st.integers(1, 7), o=st.integers(1, 7), seed=st.integers(0, 2 ** 16))
def test_batched_matmuls_match_autodiff_float64(lead, n, i, o, seed):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    w = jnp.asarray(rng.standard_normal((*lead, i, o)))
    cases = ((matmul, lambda x, w: x @ w, (*lead, n, i), (*lead, n, o)),
             (matmul_transposed, lambda x, w: x @ jnp.swapaxes(w, -1, -2), (*lead, n, o),
              (*lead, n, i)))
    for op, plain, x_shape, y_shape in cases:
      x = jnp.asarray(rng.standard_normal(x_shape))
      cotangent = jnp.asarray(rng.standard_normal(y_shape))
      got, got_vjp = jax.vjp(op, x, w)
      want, want_vjp = jax.vjp(plain, x, w)
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
      for a, b in zip(got_vjp(cotangent), want_vjp(cotangent)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=op.__name__)


# Two-operand specs with their operands' shapes as letters: the memory's dual-form products, a
# transposed operand on either side, a contraction over the leading (token) axis, an outer product.
_SPECS = ("bhci,bhpi->bhcp", "bhcp,bhpo->bhco", "bhpi,bhpo->bhio", "ij,jk->ik", "ji,kj->ik",
          "ij,kj->ki", "pi,po->io", "i,j->ij")


@settings(deadline=None, max_examples=16)
@given(spec=st.sampled_from(_SPECS), sizes=st.lists(st.integers(1, 6), min_size=7, max_size=7),
       seed=st.integers(0, 2 ** 16))
def test_einsum_matches_jnp_einsum_autodiff_float64(spec, sizes, seed):
  rng = np.random.default_rng(seed)
  size = dict(zip("bhcpioj", sizes)) | {"k": sizes[0]}
  operands, out = spec.split("->")
  with jax.enable_x64(True):
    x, y = (jnp.asarray(rng.standard_normal([size[a] for a in s])) for s in operands.split(","))
    cotangent = jnp.asarray(rng.standard_normal([size[a] for a in out]))
    got, got_vjp = jax.vjp(lambda x, y: einsum(spec, x, y), x, y)
    want, want_vjp = jax.vjp(lambda x, y: jnp.einsum(spec, x, y), x, y)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("x", "y"), got_vjp(cotangent), want_vjp(cotangent)):
      assert a.shape == b.shape, (spec, name)
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=f"{spec} {name}")


def _dot_operand_types(hlo: str) -> list[str]:
  """Element types of the operands of every dot in compiled HLO text."""
  types, found = {}, []
  for line in hlo.splitlines():
    define = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+)\[", line)
    if define:
      types[define.group(1)] = define.group(2)
    use = re.search(r" dot\(%(\S+), %(\S+)\)", line)
    if use:
      found += [types[name] for name in use.groups()]
  return found


def test_bfloat16_products_accumulate_in_float32_and_keep_bfloat16_operands():
  """On CPU a bf16 dot with a transposed operand or a bf16 result runs as a float32 dot at a
  quarter of the speed (ops/dense.py); every dot of the forward and backward takes bf16."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (3, 40, 48), jnp.bfloat16)
  w = jax.random.normal(keys[1], (48, 4, 8), jnp.bfloat16)
  cotangent = jax.random.normal(keys[2], (3, 40, 4, 8), jnp.bfloat16)
  fwd_bwd = jax.jit(lambda x, w: jax.vjp(lambda x, w: contract(x, w, 1), x, w)[1](cotangent))
  types = _dot_operand_types(fwd_bwd.lower(x, w).compile().as_text())
  assert len(types) == 4 and set(types) == {"bf16"}, types
  # float32 accumulation: the products of the bf16 values in float32, rounded once.
  f32 = lambda a: a.astype(jnp.float32)
  y = contract(x, w, 1)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(f32(y), jnp.tensordot(f32(x), f32(w), 1), rtol=2 ** -8, atol=1e-6)
  dx, dw = fwd_bwd(x, w)
  np.testing.assert_allclose(f32(dw), jnp.tensordot(f32(x), f32(cotangent), ((0, 1), (0, 1))),
                             rtol=2 ** -8, atol=1e-5)
  np.testing.assert_allclose(f32(dx), jnp.tensordot(f32(cotangent), f32(w), ((2, 3), (1, 2))),
                             rtol=2 ** -8, atol=1e-5)


def test_bfloat16_swiglu_keeps_bfloat16_operands():
  keys = jax.random.split(jax.random.key(1), 5)
  x = jax.random.normal(keys[0], (2, 24, 16), jnp.bfloat16)
  shapes = [(16, 40), (16, 40), (40, 16)]
  ws = [jax.random.normal(k, s, jnp.bfloat16) for k, s in zip(keys[1:], shapes)]
  cotangent = jax.random.normal(keys[4], x.shape, jnp.bfloat16)
  fwd_bwd = jax.jit(lambda *a: jax.vjp(swiglu, *a)[1](cotangent))
  types = _dot_operand_types(fwd_bwd.lower(x, *ws).compile().as_text())
  assert len(types) >= 2 * 7 and set(types) == {"bf16"}, types  # XLA may merge two
