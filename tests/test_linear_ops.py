"""linear_attention and delta_rule: every mode against a float64 per-token loop, with gradients.

Batch rows carry different gate strengths (log-sigmoid gates times 0.1, 1 and 10) so one compiled
case covers all three, and row 0 packs several documents. Errors are measured per row and per
output as max |error| / max |reference|.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memzoo.models.ops.chunking import prefix_sum
from memzoo.models.ops.delta_rule import delta_rule
from memzoo.models.ops.linear_attention import linear_attention
from memzoo.models.ops.linear_recurrence import unit_lower_inverse

OPS = {"linear_attention": linear_attention, "delta_rule": delta_rule}
MODES = {"linear_attention": ("chunk", "recurrent", "parallel"),
         "delta_rule": ("chunk", "recurrent")}
DECAY_SCALES = (0.1, 1.0, 10.0)  # gate strength of batch rows 0, 1, 2, ...
FP32_TOL = 2e-5  # float32 arithmetic against float64
# These shapes are tiny: compiling dominates, and LLVM's optimisations only cost time here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def naive_recurrence(args, segment_ids):
  """The definition, token by token: decay (zero at a new document), write (plain / delta), read."""
  q, k, v = args["q"], args["k"], args["v"]
  beta, g = args.get("beta"), args.get("log_decay")
  b, t, h, dk = q.shape
  g = jnp.zeros((b, t, h, 1), q.dtype) if g is None else g
  g = g[..., None] if g.ndim == 3 else g
  new_doc = jnp.zeros((b, t), bool)
  if segment_ids is not None:
    new_doc = new_doc.at[:, 1:].set(segment_ids[:, 1:] != segment_ids[:, :-1])

  def step(s, x):
    q_t, k_t, v_t, beta_t, g_t, new_doc_t = x
    s = s * jnp.where(new_doc_t[:, None, None, None], 0.0, jnp.exp(g_t)[..., None])
    u = v_t
    if beta_t is not None:
      u = beta_t[..., None] * (v_t - jnp.einsum("bhk,bhkv->bhv", k_t, s))
    s = s + jnp.einsum("bhk,bhv->bhkv", k_t, u)
    return s, dk ** -0.5 * jnp.einsum("bhk,bhkv->bhv", q_t, s)

  time_major = lambda a: None if a is None else jnp.swapaxes(a, 0, 1)
  state, o = jax.lax.scan(step, args["initial_state"],
                          tuple(map(time_major, (q, k, v, beta, g, new_doc))))
  return jnp.swapaxes(o, 0, 1), state


def make_inputs(seed, op, *, b=3, t=75, h=2, dk=60, dv=12, gate="scalar", documents=1):
  """float64 numpy inputs: unit-norm keys, sigmoid beta, gates -softplus(-x) * DECAY_SCALES[row].

  Row 0 is cut into `documents` documents (segment_ids is None for one document).
  """
  rng = np.random.default_rng(seed)
  k = rng.normal(size=(b, t, h, dk))
  args = {"q": rng.normal(size=(b, t, h, dk)), "k": k / np.linalg.norm(k, axis=-1, keepdims=True),
          "v": rng.normal(size=(b, t, h, dv)), "initial_state": rng.normal(size=(b, h, dk, dv))}
  if op == "delta_rule":
    args["beta"] = 1 / (1 + np.exp(-rng.normal(size=(b, t, h))))
  if gate != "none":
    shape = (b, t, h) if gate == "scalar" else (b, t, h, dk)
    scales = np.resize(DECAY_SCALES, b).reshape((b,) + (1,) * (len(shape) - 1))
    args["log_decay"] = -np.logaddexp(0, -rng.normal(size=shape)) * scales
  if documents == 1:
    return args, None
  cuts = np.sort(rng.choice(np.arange(1, t), size=documents - 1, replace=False))
  segment_ids = np.zeros((b, t), np.int32)
  segment_ids[0] = np.searchsorted(cuts, np.arange(t), side="right")
  return args, segment_ids


def apply_op(op, args, segment_ids=None, **kwargs):
  a = dict(args)
  positional = [a.pop("q"), a.pop("k"), a.pop("v")] + ([a.pop("beta")] if "beta" in a else [])
  return OPS[op](*positional, segment_ids=segment_ids, **a, **kwargs)


def cotangents(args, dtype):
  """Random cotangents for (o, final_state); the one on o is bf16-representable."""
  rng = np.random.default_rng(123)
  b, t, h, _ = args["q"].shape
  ct_o = jnp.asarray(rng.normal(size=(b, t, h, args["v"].shape[-1])), jnp.bfloat16)
  return (ct_o.astype(dtype),
          jnp.asarray(rng.normal(size=args["initial_state"].shape), jnp.float32))


@functools.partial(jit, static_argnames=("fn",))
def _outputs_and_grads(fn, args, segment_ids, cts):
  (o, state), vjp = jax.vjp(lambda a: fn(a, segment_ids), args)
  return o, state, vjp(cts)[0]


def run_op(op, args, segment_ids, dtype=jnp.float32, **kwargs):
  """`(o, final_state, grads of <o, ct_o> + <state, ct_state> wrt every input)`, as float64."""
  fn = functools.partial(apply_op, op, **kwargs)
  cast = {n: jnp.asarray(a, dtype) for n, a in args.items()}
  outs = _outputs_and_grads(fn, cast, segment_ids, cotangents(args, dtype))
  return jax.tree.map(lambda a: np.asarray(a, np.float64), outs)


def reference(args, segment_ids):
  """The same triple from `naive_recurrence`, in float64."""
  with jax.enable_x64(True):
    args = {n: jnp.asarray(a, jnp.float64) for n, a in args.items()}
    cts = tuple(c.astype(jnp.float64) for c in cotangents(args, jnp.float64))
    outs = _outputs_and_grads(naive_recurrence, args, segment_ids, cts)
    return jax.tree.map(np.asarray, outs)


@functools.lru_cache(maxsize=None)
def cached_reference(op, seed, **shape):
  args, segment_ids = make_inputs(seed, op, **shape)
  return reference(args, segment_ids)


def assert_close(got, want, tol, what=""):
  """Per leaf and per batch row: finite, and max |got - want| <= tol * max |want|."""
  got_leaves = jax.tree_util.tree_leaves_with_path(got)
  want_leaves = jax.tree_util.tree_leaves_with_path(want)
  assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
  for (path, g), (_, w) in zip(got_leaves, want_leaves):
    name = what + jax.tree_util.keystr(path)
    assert g.shape == w.shape, f"{name}: shape {g.shape} != {w.shape}"
    assert np.all(np.isfinite(g)), f"{name} has non-finite values"
    for row, (g_row, w_row) in enumerate(zip(g, w)):
      err = np.max(np.abs(g_row - w_row)) / max(np.max(np.abs(w_row)), 1e-30)
      assert err <= tol, f"{name} row {row}: relative error {err:.1e} > {tol:.0e}"


def check(op, mode, *, chunk_size, seed=0, **shape):
  args, segment_ids = make_inputs(seed, op, **shape)
  got = run_op(op, args, segment_ids, mode=mode, chunk_size=chunk_size)
  assert_close(got, cached_reference(op, seed, **shape), FP32_TOL, f"{op}/{mode} ")


@pytest.mark.parametrize("gate,t,chunk_size",
                         [("scalar", 63, 16), ("vector", 75, 32), ("none", 70, 32)])
@pytest.mark.parametrize("op,mode", [(op, m) for op in OPS for m in MODES[op]])
def test_every_mode_matches_float64_loop(op, mode, gate, t, chunk_size):
  """o, final state and gradients wrt q, k, v, beta, log_decay, initial_state. Dk = 60; chunks
  that do not divide T; rows with gates x0.1 / x1 / x10 (or no decay, which the chunk form runs
  without exps); row 0 packs three documents."""
  check(op, mode, gate=gate, t=t, documents=3, chunk_size=chunk_size)


@pytest.mark.parametrize("op,t,chunk_size,b,gate", [
    ("linear_attention", 1, 64, 3, "none"), ("delta_rule", 1, 16, 3, "vector"),
    ("linear_attention", 500, 64, 1, "vector"), ("delta_rule", 500, 32, 1, "scalar")])
def test_awkward_lengths_and_chunk_sizes(op, t, chunk_size, b, gate):
  """Chunk form with gradients at T = 1 and T = 500 (Dk = 16 there), and without a gate."""
  check(op, "chunk", t=t, b=b, dk=60 if t < 500 else 16, gate=gate, chunk_size=chunk_size)


@pytest.mark.parametrize("op", OPS)
def test_bfloat16_inputs_keep_float32_state(op):
  """bf16 in, bf16 out, fp32 state; against float64 on the same bf16-rounded inputs.

  Tolerance: o is rounded to bf16 (8-bit mantissa), so 1e-2 of the row's largest value; the final
  state is never rounded and keeps the float32 tolerance.
  """
  args, _ = make_inputs(0, op, gate="vector")
  cast = {n: jnp.asarray(a, jnp.bfloat16) for n, a in args.items()}
  o, state = jit(functools.partial(apply_op, op, chunk_size=32))(cast)
  assert o.dtype == jnp.bfloat16 and state.dtype == jnp.float32
  with jax.enable_x64(True):
    want_o, want_state = jit(naive_recurrence)(
        {n: jnp.asarray(a, jnp.float64) for n, a in cast.items()}, None)
  assert_close(np.asarray(state, np.float64), np.asarray(want_state), FP32_TOL, "state")
  assert_close(np.asarray(o, np.float64), np.asarray(want_o), 1e-2, "o")


@settings(max_examples=4, deadline=None)
@given(b=st.integers(1, 2), t=st.integers(1, 90), h=st.integers(1, 3), dk=st.integers(1, 24),
       dv=st.integers(1, 24), chunk_size=st.sampled_from([16, 32, 48]),
       gate=st.sampled_from(["none", "scalar", "vector"]), op=st.sampled_from(sorted(OPS)),
       data=st.data())
def test_shapes_property(b, t, h, dk, dv, chunk_size, gate, op, data):
  """Forward of a random mode on random shapes (D = 1, T = 1, T < C, ...) == float64 loop."""
  mode = data.draw(st.sampled_from(MODES[op]))
  args, _ = make_inputs(1, op, b=b, t=t, h=h, dk=dk, dv=dv, gate=gate)
  fn = jit(functools.partial(apply_op, op, mode=mode, chunk_size=chunk_size))
  o, state = fn({n: jnp.asarray(a, jnp.float32) for n, a in args.items()})
  assert o.shape == (b, t, h, dv) and state.shape == (b, h, dk, dv)
  with jax.enable_x64(True):
    want = jit(naive_recurrence)({n: jnp.asarray(a) for n, a in args.items()}, None)
  assert_close((np.asarray(o), np.asarray(state)), jax.tree.map(np.asarray, want), FP32_TOL)


@pytest.mark.parametrize("op", OPS)
def test_packed_documents_equal_separate_runs(op):
  """One row packing three 25-token documents == the three documents as rows, from zero state."""
  args, _ = make_inputs(2, op, b=3, t=25, gate="vector")
  docs = {n: jnp.asarray(a, jnp.float32) for n, a in args.items()}
  docs["initial_state"] = jnp.zeros_like(docs["initial_state"])
  packed = {n: a.reshape((1, 75) + a.shape[2:]) for n, a in docs.items() if n != "initial_state"}
  packed["initial_state"] = docs["initial_state"][:1]
  segment_ids = jnp.repeat(jnp.array([[4, 7, 9]]), 25, axis=1)
  run = jit(functools.partial(apply_op, op, chunk_size=16))
  o, state = run(packed, segment_ids)
  doc_o, doc_state = run(docs)
  np.testing.assert_allclose(o.reshape(doc_o.shape), doc_o, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state[0], doc_state[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "fused"}, "mode"),
    ({"log_decay": jnp.zeros((1, 5, 2, 3))}, "log_decay"),
    ({"initial_state": jnp.zeros((1, 2, 4, 4))}, "initial_state"),
    ({"segment_ids": jnp.zeros((1, 4), jnp.int32)}, "segment_ids"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
  q = jnp.zeros((1, 5, 2, 4))
  with pytest.raises(ValueError, match=match):
    linear_attention(q, q, jnp.zeros((1, 5, 2, 3)), **kwargs)


def test_delta_rule_has_no_parallel_mode():
  q = jnp.zeros((1, 5, 2, 4))
  with pytest.raises(ValueError, match="mode"):
    delta_rule(q, q, q, jnp.zeros((1, 5, 2)), mode="parallel")


@pytest.mark.parametrize("size", [1, 5, 48, 64])
def test_unit_lower_inverse_on_correlated_keys(size):
  """The delta-rule system I + beta K K^T (strictly lower) with nearly parallel keys of random sign
  and beta up to 2: the block inversion matches float64 to float32 precision, also for sizes that are
  not powers of two (zero-padded)."""
  rng = np.random.default_rng(size)
  base = rng.normal(size=(4, 1, 32))
  k = base * rng.choice([-1.0, 1.0], size=(4, size, 1)) + 0.05 * rng.normal(size=(4, size, 32))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  beta = rng.uniform(0, 2, size=(4, size, 1))
  strict = beta * np.tril(k @ np.swapaxes(k, 1, 2), -1)
  want = np.linalg.inv(np.eye(size) + strict)
  got = np.asarray(unit_lower_inverse(jnp.asarray(strict, jnp.float32)), np.float64)
  assert np.max(np.abs(got - want)) <= 2e-5 * np.max(np.abs(want))


def test_prefix_sum_over_chunk_tokens():
  """The chunk forms' cumulative sum over axis 2 of `[N, Z, C, D]`: the float64 sum to float32
  rounding for floats, exact for integers."""
  rng = np.random.default_rng(0)
  g = -5 * np.abs(rng.standard_normal((3, 4, 64, 2))).astype(np.float32)
  want = np.cumsum(g.astype(np.float64), axis=2)
  got = np.asarray(jax.jit(prefix_sum)(g), np.float64)
  assert got.shape == g.shape
  np.testing.assert_allclose(got, want, rtol=1e-6)
  starts = rng.integers(0, 2, (3, 4, 48)).astype(np.int32)
  np.testing.assert_array_equal(jax.jit(prefix_sum)(starts), np.cumsum(starts, axis=2))
