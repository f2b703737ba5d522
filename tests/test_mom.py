"""Mixture-of-Memories: routed memories against a per-memory gather / recurrence / scatter reference
in float64, routing ties, the Switch loss by hand, resets, decoding, and the aux loss in training.

(`test_mixer_contract.py` checks causality, segment isolation, prefill + step and logical axes with
the default options.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import example, given, settings, strategies as st
from helpers import sequence_mesh_check
from test_knobs import to_scanned
from test_linear_ops import assert_close, naive_recurrence

from memzoo.errors import ConfigError
from memzoo.models.backbone import LanguageModel
from memzoo.models.layers import registry
from memzoo.models.layers.mom import MEMORY_OPS
from memzoo.models.ops.conv import causal_conv1d
from memzoo.models.ops.mixture_of_memories import mixture_of_memories
from memzoo.models.ops.routing import load_balancing_loss, top_k_route
from memzoo.train.state import TrainState
from memzoo.train.step import make_train_step

D, HEADS, T = 32, 2, 21
FP32_TOL = 1e-4  # float32 layer against the float64 reference, relative to the largest value
# Tiny shapes: compiling dominates, and LLVM's optimisations only cost time here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def gather_reference(q, k, v, beta, log_decay, memories, weights, initial_state, segment_ids):
  """The definition, in float64: for each row and memory, gather the tokens routed to it, run the
  naive recurrence over that subsequence (resetting where the document changes), scatter the
  weighted reads back. A memory's state starts from `initial_state` only if its first token is in
  the row's first document, and ends at zero if the row's last document never reached it.

  The subsequences are padded at the end to T with no-op tokens (k = beta = log_decay = 0, the
  last token's document) so that all B M of them run in one `naive_recurrence`; reads there are
  dropped and the state passes through them unchanged."""
  b, t, m = k.shape[:3]
  docs = np.zeros((b, t), np.int32) if segment_ids is None else np.asarray(segment_ids)
  memories = np.asarray(memories)
  index = np.zeros((b, m, t), np.int32)  # [row, memory, j] -> the j-th token routed there
  valid = np.zeros((b, m, t), bool)
  slot = np.zeros((b, m, t), np.int32)
  keep_initial, keep_final = np.ones((b, m)), np.ones((b, m))
  for row in range(b):
    for memory in range(m):
      tokens, slots = np.nonzero(memories[row] == memory)  # in time order
      n = len(tokens)
      index[row, memory, :n], slot[row, memory, :n], valid[row, memory, :n] = tokens, slots, True
      index[row, memory, n:] = tokens[-1] if n else 0
      first, last = (tokens[0], tokens[-1]) if n else (0, 0)
      keep_initial[row, memory] = docs[row, first] == docs[row, 0]
      keep_final[row, memory] = docs[row, -1] == docs[row, last]
  rows = np.arange(b)[:, None, None]
  flat = lambda a: a.reshape((b * m, t) + a.shape[3:])

  def gather(a, per_memory=True, mask=False):  # [B, T, (M), ...] -> [B M, T, ...]
    a = a[rows, index, np.arange(m)[None, :, None]] if per_memory else a[rows, index]
    if mask:
      a = a * valid.reshape(valid.shape + (1,) * (a.ndim - 3))
    return flat(a)
  args = {"q": gather(q, per_memory=False), "k": gather(k, mask=True), "v": gather(v),
          "initial_state": (initial_state * keep_initial[..., None, None, None]).reshape(
              (b * m,) + initial_state.shape[2:])}
  if beta is not None:
    args["beta"] = gather(beta, mask=True)
  if log_decay is not None:
    args["log_decay"] = gather(log_decay, mask=True)
  reads, final = naive_recurrence(args, flat(docs[rows, index]))
  reads = reads.reshape((b, m) + reads.shape[1:])
  w = weights[rows, index, slot] * valid  # [B, M, T]
  rows_of, memories_of, js = np.nonzero(valid)
  picked = w[rows_of, memories_of, js][:, None, None] * reads[rows_of, memories_of, js]
  o = jnp.zeros(q.shape[:3] + v.shape[-1:], q.dtype)
  o = o.at[rows_of, index[rows_of, memories_of, js]].add(picked)
  final = final.reshape(initial_state.shape) * keep_final[..., None, None, None]
  return o, final


def random_routing(rng, b, t, num_memories, top_k, shared):
  """`(memories [B, T, P], weights [B, T, P])`: k distinct random memories, then the shared one."""
  memories = np.argsort(rng.random((b, t, num_memories)), axis=-1)[..., :top_k]
  weights = rng.random((b, t, top_k)) + 0.1
  if shared:
    memories = np.concatenate([memories, np.full((b, t, 1), num_memories)], -1)
    weights = np.concatenate([weights, np.ones((b, t, 1))], -1)
  return memories.astype(np.int32), weights


def op_inputs(seed, *, b, t, num_memories, top_k, shared, memory_op, documents):
  """float64 numpy inputs of `mixture_of_memories`, shaped as the layer makes them."""
  rng = np.random.default_rng(seed)
  m, h, dk, dv = num_memories + shared, 2, 8, 4
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  args = {"q": unit(rng.normal(size=(b, t, h, dk))), "k": unit(rng.normal(size=(b, t, m, h, dk))),
          "v": rng.normal(size=(b, t, m, h, dv)),
          "initial_state": rng.normal(size=(b, m, h, dk, dv))}
  _, has_beta, has_decay = MEMORY_OPS[memory_op]
  if has_beta:
    args["beta"] = 1 / (1 + np.exp(-rng.normal(size=(b, t, m, h))))
  if has_decay:
    args["log_decay"] = -np.logaddexp(0, -rng.normal(size=(b, t, m, h)))
  memories, args["weights"] = random_routing(rng, b, t, num_memories, top_k, shared)
  cuts = np.sort(rng.choice(np.arange(1, t), size=min(documents, t) - 1, replace=False))
  segment_ids = np.searchsorted(cuts, np.arange(t), side="right")[None].repeat(b, 0)
  return args, memories, segment_ids.astype(np.int32)


@functools.partial(jit, static_argnames=("op", "form", "mode", "chunk_size"))
def _op_outputs_and_grads(args, memories, segment_ids, cts, *, op, form, mode, chunk_size):
  def run(a):
    return mixture_of_memories(op, **a, memories=memories, segment_ids=segment_ids, form=form,
                               mode=mode, chunk_size=chunk_size)
  (o, state), vjp = jax.vjp(run, args)
  return o, state, vjp(cts if form == "masked" else (cts[0], None))[0]


def cotangents(o_shape, state_shape, dtype):
  rng = np.random.default_rng(7)
  return (jnp.asarray(rng.normal(size=o_shape), dtype),
          jnp.asarray(rng.normal(size=state_shape), dtype))


def reference_outputs_and_grads(args, memories, segment_ids, cts):
  """float64 `(o, final state, grads of args)` of `gather_reference` (zero initial state when
  `args` has none), jitted: eager, its scatters and scan dominate the test's time."""
  state_shape = cts[1].shape

  def run(a, cts):
    def reference(a):
      initial_state = a.get("initial_state", jnp.zeros(state_shape))
      return gather_reference(a["q"], a["k"], a["v"], a.get("beta"), a.get("log_decay"),
                              memories, a["weights"], initial_state, segment_ids)
    (o, state), vjp = jax.vjp(reference, a)
    return o, state, vjp(cts)[0]
  with jax.enable_x64(True):
    args = {n: jnp.asarray(a, jnp.float64) for n, a in args.items()}
    outs = jit(run)(args, tuple(jnp.asarray(c, jnp.float64) for c in cts))
    return jax.tree.map(np.asarray, outs)


@pytest.mark.parametrize("form", ["masked", "gathered"])
@settings(max_examples=1, deadline=None)
@example(t=21, num_memories=4, top_k=2, shared=True, memory_op="gated_delta_rule", chunk_size=8,
         documents=2)  # the paper's defaults, always run
@given(t=st.integers(1, 30), num_memories=st.integers(1, 4), top_k=st.integers(1, 4),
       shared=st.booleans(), memory_op=st.sampled_from(sorted(MEMORY_OPS)),
       chunk_size=st.sampled_from([4, 8]), documents=st.integers(1, 3))
def test_op_equals_gather_reference(form, t, num_memories, top_k, shared, memory_op, chunk_size,
                                    documents):
  """Outputs / final states / gradients of every input, any op of the family; the gathered form
  has no state in or out."""
  top_k = min(top_k, num_memories)
  args, memories, segment_ids = op_inputs(0, b=2, t=t, num_memories=num_memories, top_k=top_k,
                                          shared=shared, memory_op=memory_op,
                                          documents=documents)
  cts = cotangents(args["q"].shape[:3] + args["v"].shape[-1:], args["initial_state"].shape,
                   jnp.float32)
  if form == "gathered":
    args = {n: a for n, a in args.items() if n != "initial_state"}
    cts = (cts[0], jnp.zeros_like(cts[1]))
  want = reference_outputs_and_grads(args, memories, segment_ids, cts)
  got = _op_outputs_and_grads({n: jnp.asarray(a, jnp.float32) for n, a in args.items()},
                              memories, segment_ids, cts, op=MEMORY_OPS[memory_op][0], form=form,
                              mode="chunk", chunk_size=chunk_size)
  if form == "gathered":
    want, got = (want[0], want[2]), (got[0], got[2])
  assert_close(jax.tree.map(lambda a: np.asarray(a, np.float64), got), want, FP32_TOL,
               f"{memory_op}/{form} ")


def test_unrouted_tokens_leave_a_memory_state_bit_identical():
  """beta = 0, log_decay = 0 and k = 0 at tokens not routed to a memory: its state passes through
  unchanged, bit for bit, in both modes (memory 1 gets no token here)."""
  args, _, _ = op_inputs(1, b=1, t=19, num_memories=2, top_k=1, shared=False,
                         memory_op="gated_delta_rule", documents=1)
  args = {n: jnp.asarray(a, jnp.float32) for n, a in args.items()}
  memories = jnp.zeros((1, 19, 1), jnp.int32)
  for mode in ("chunk", "recurrent"):
    _, state = jit(functools.partial(mixture_of_memories, MEMORY_OPS["gated_delta_rule"][0],
                                     memories=memories, mode=mode, chunk_size=8))(**args)
    np.testing.assert_array_equal(state[:, 1], args["initial_state"][:, 1])
    assert not np.allclose(state[:, 0], args["initial_state"][:, 0])


def test_segment_start_resets_every_memory():
  """A new document zeroes every memory, routed to there or not: after a boundary at t = 7 with
  only memory 0 written in the second document, memory 1's final state is exactly zero and
  memory 0 reads as a fresh run over the second document."""
  args, _, _ = op_inputs(2, b=1, t=15, num_memories=2, top_k=1, shared=False,
                         memory_op="gated_delta_rule", documents=1)
  args = {n: jnp.asarray(a, jnp.float32) for n, a in args.items()}
  memories = jnp.asarray(np.r_[np.arange(7) % 2, np.zeros(8)].astype(np.int32)[None, :, None])
  segment_ids = jnp.asarray(np.r_[np.zeros(7), np.ones(8)].astype(np.int32)[None])
  run = jit(functools.partial(mixture_of_memories, MEMORY_OPS["gated_delta_rule"][0], mode="chunk",
                              chunk_size=4))
  o, state = run(**args, memories=memories, segment_ids=segment_ids)
  np.testing.assert_array_equal(state[:, 1], 0.0)
  fresh = {n: a[:, 7:] for n, a in args.items() if n != "initial_state"}
  o_fresh, state_fresh = run(**fresh, memories=memories[:, 7:])
  np.testing.assert_allclose(o[:, 7:], o_fresh, atol=1e-6)
  np.testing.assert_allclose(state[:, 0], state_fresh[:, 0], atol=1e-6)


# The layer.

def initialised(make):
  """`make()`, its parameters drawn in one jit: eager, every initialiser compiles on its own."""
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return nnx.merge(graphdef, jit(lambda: nnx.split(make())[1])())


def build(**options):
  return initialised(lambda: registry.build(
      "mixer", "mom", {"d_model": D, "num_heads": HEADS, "mom": options}, rngs=nnx.Rngs(0)))


def reference_routing(p, x, top_k):
  """`[B, T, top_k]` memories of the float64 router logits, by their stable order (ties to the
  lower index)."""
  logits = np.einsum("btd,de->bte", x, np.asarray(p["router"]["kernel"], np.float64))
  return np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]


def layer_reference(p, x, chosen, segment_ids, *, num_memories):
  """The layer in float64 from its parameters `p` (a pure dict), tokens routed to the memories
  `chosen` [B, T, k] (+ the shared one), memories through `gather_reference`."""
  silu = jax.nn.silu
  unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6)

  def conv(a, weight):  # the tested short conv over all tokens, then SiLU
    flat, _ = causal_conv1d(a.reshape(a.shape[:2] + (-1,)), weight.reshape(weight.shape[0], -1),
                            segment_ids=segment_ids)
    return silu(flat.reshape(a.shape))

  logits = jnp.einsum("btd,de->bte", x, p["router"]["kernel"])
  probs = jnp.take_along_axis(jax.nn.softmax(logits), chosen, -1)
  memories = np.concatenate([chosen, np.full(chosen.shape[:2] + (1,), num_memories)], -1)
  weights = jnp.concatenate([probs / probs.sum(-1, keepdims=True),
                             jnp.ones(probs.shape[:2] + (1,))], -1)
  project = lambda name: jnp.einsum("btd,d...->bt...", x, p[name]["kernel"])
  q = unit(conv(project("q_proj"), p["convs"][0]["weight"]))
  k = unit(conv(project("k_proj"), p["convs"][1]["weight"]))
  v = conv(project("v_proj"), p["convs"][2]["weight"])
  beta = jax.nn.sigmoid(project("beta_proj"))
  log_decay = -jnp.exp(p["A_log"]) * jax.nn.softplus(project("decay_proj") + p["dt_bias"])
  o, _ = gather_reference(q, k, v, beta, log_decay, memories, weights,
                          jnp.zeros(k.shape[:1] + k.shape[2:] + v.shape[-1:]), segment_ids)
  y = o / jnp.sqrt(jnp.mean(o * o, -1, keepdims=True) + 1e-5) * p["out_norm"]["scale"]
  y = y * silu(project("gate_proj"))
  return jnp.einsum("bthv,hvd->btd", y, p["o_proj"]["kernel"])


def test_layer_equals_gather_reference():
  """Default MoM (4 memories, top-2, shared memory, gated delta rule, short convs, output gate,
  masked form), chunks of 8 over 21 tokens, row 0 packing two documents: outputs and gradients of
  every parameter and of the input against the float64 reference. (The gathered form is the same
  function: `test_op_equals_gather_reference`, `test_prefill_then_step_across_chunks`.)"""
  layer = build(chunk_size=8)
  graphdef, params = nnx.split(layer, nnx.Param)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, T, D))
  segment_ids = np.zeros((2, T), np.int32)
  segment_ids[0, 9:] = 1
  cotangent = rng.normal(size=(2, T, D))

  def outputs_and_grads(f, params, x, cotangent):
    y, vjp = jax.vjp(f, params, x)
    return (y, *vjp(cotangent))

  def layer(p, x):
    return nnx.merge(graphdef, p).mix_with_aux(x, segment_ids=jnp.asarray(segment_ids))
  (y, aux), grads, dx = jit(functools.partial(outputs_and_grads, layer))(
      params, jnp.asarray(x, jnp.float32),
      (jnp.asarray(cotangent, jnp.float32), jnp.zeros((), jnp.float32)))
  p = nnx.to_pure_dict(params)
  chosen = reference_routing(p, x, top_k=2)
  reference = functools.partial(layer_reference, chosen=chosen, segment_ids=segment_ids,
                                num_memories=4)
  with jax.enable_x64(True):
    to64 = lambda a: jnp.asarray(a, jnp.float64)
    want = jit(functools.partial(outputs_and_grads, reference))(
        jax.tree.map(to64, p), to64(x), to64(cotangent))
    want = jax.tree.map(np.asarray, want)
  got = (y, nnx.to_pure_dict(grads), dx)
  assert_close(jax.tree.map(lambda a: np.asarray(a, np.float64), got), want, FP32_TOL)
  # Switch's loss of this routing: E sum_e f_e P_e over the 2 T tokens' 2 choices each.
  logits = np.einsum("btd,de->bte", x, np.asarray(p["router"]["kernel"], np.float64))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  fraction = np.bincount(chosen.ravel(), minlength=4) / chosen.size
  np.testing.assert_allclose(aux, 4 * np.sum(fraction * probs.mean((0, 1))), rtol=1e-5)


def test_top_k_ties_go_to_the_lower_index():
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 3.0, 0.0], [2.0, 1.0, 2.0, 2.0]])
  weights, indices, _ = top_k_route(logits, 2)
  np.testing.assert_array_equal(indices, [[0, 1], [1, 2], [0, 2]])
  np.testing.assert_allclose(weights, 0.5)
  # Logits -200 and -199 both underflow to probability 0; the selection still follows the logits.
  weights, indices, probs = top_k_route(jnp.array([[-200.0, 0.0, -199.0]]), 2)
  assert probs[0, 0] == probs[0, 2] == 0
  np.testing.assert_array_equal(indices, [[1, 2]])
  np.testing.assert_array_equal(weights, [[1.0, 0.0]])


def test_tied_router_routes_every_token_to_the_first_memories():
  """A zero router ties all logits: every token goes to memories 0 and 1. Redrawing memories 2
  and 3's parameters leaves the output bit for bit unchanged; redrawing memory 1's changes it."""
  layer = build(chunk_size=8)
  layer.router.kernel[...] = jnp.zeros_like(layer.router.kernel[...])
  graphdef, params = nnx.split(layer, nnx.Param)
  x = jax.random.normal(jax.random.key(4), (2, 11, D))
  forward = jit(lambda p: nnx.merge(graphdef, p)(x))
  y = forward(params)

  def redraw(memories):
    p = nnx.to_pure_dict(params)
    for name in ("k_proj", "v_proj", "beta_proj", "decay_proj"):
      kernel = np.array(p[name]["kernel"])
      kernel[:, memories] = np.random.default_rng(0).normal(size=kernel[:, memories].shape)
      p[name]["kernel"] = jnp.asarray(kernel)
    new = nnx.clone(params)
    nnx.replace_by_pure_dict(new, p)
    return new
  np.testing.assert_array_equal(forward(redraw([2, 3])), y)
  assert not np.allclose(forward(redraw([1])), y)


def test_load_balancing_loss_is_switch_formula_by_hand():
  """Two tokens, E = 4, top-2. Token 0: p = (.4, .3, .2, .1) -> {0, 1}; token 1:
  p = (.5, .1, .3, .1) -> {0, 2}. f = (2, 1, 1, 0) / 4 assignments; P = (.45, .2, .25, .1);
  loss = 4 (.5 * .45 + .25 * .2 + .25 * .25 + 0) = 1.35; d loss / d p_te = E f_e / N."""
  probs = jnp.array([[0.4, 0.3, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1]])
  _, indices, routed_probs = top_k_route(jnp.log(probs), 2)
  np.testing.assert_array_equal(indices, [[0, 1], [0, 2]])
  loss, grad = jax.value_and_grad(load_balancing_loss)(routed_probs, indices)
  np.testing.assert_allclose(loss, 1.35, rtol=1e-6)
  np.testing.assert_allclose(grad, [[1.0, 0.5, 0.5, 0.0]] * 2, rtol=1e-6)
  uniform = jnp.full((4, 4), 0.25)
  np.testing.assert_allclose(load_balancing_loss(uniform, jnp.array([[0, 1], [2, 3]] * 2)), 1.0)
  # (The layer's own aux loss: `test_layer_equals_gather_reference`.)


def test_prefill_then_step_across_chunks():
  """Chunks of 8 over 21 tokens: prefill 11 (states and conv tails cross a chunk boundary), then 10
  steps == the forward, here in the gathered form; the state holds E + 1 memories."""
  layer = build(form="gathered", chunk_size=8)
  graphdef, params = nnx.split(layer)
  x = jax.random.normal(jax.random.key(1), (2, T, D))
  full = jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
  y, state = jit(lambda p, x, s: nnx.merge(graphdef, p).prefill(x, s))(
      params, x[:, :11], layer.init_state(2, T))
  step = jit(lambda p, x, s: nnx.merge(graphdef, p).step(x, s))
  outs = [y]
  for t in range(11, T):
    y_t, state = step(params, x[:, t], state)
    outs.append(y_t[:, None])
  assert state["memories"].shape == (2, 5, HEADS, D // HEADS, D // HEADS)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("options,field", [
    ({"top_k": 5}, "top_k"), ({"num_memories": 0}, "num_memories"),
    ({"memory_op": "gla"}, "memory_op"), ({"form": "sorted"}, "form")])
def test_bad_options_are_config_errors(options, field):
  with pytest.raises(ConfigError, match=f"config.model.mom.{field}"):
    build(**options)


# The auxiliary loss in training.

def lm(*, abstract=False, **model):
  """`(graphdef, pure-dict params or None)` of a tiny LM of MoM layers with chunks of 8."""
  config = dict(vocab_size=17, d_model=D, num_heads=HEADS, mixers=("mom",), mom={"chunk_size": 8})
  make = lambda: LanguageModel({**config, **model}, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(nnx.eval_shape(make) if abstract else initialised(make), nnx.Param)
  return graphdef, None if abstract else nnx.to_pure_dict(params)


def test_trains_inside_language_model():
  """The train step (cross-entropy + 0.01 aux loss) of a 2-layer MoM LM under `scan_layers` and
  `remat="full"` (nnx.scan / nnx.remat over the layer) fits a fixed batch; its metrics (which the
  trainer writes to metrics.jsonl) report the aux loss, at the first step equal to the layer
  loop's sum over the layers."""
  graphdef, params = lm(num_layers=2)
  scan_graphdef, _ = lm(num_layers=2, scan_layers=True, remat="full", abstract=True)
  tokens = jax.random.randint(jax.random.key(2), (4, 25), 0, 17)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  _, aux = jit(lambda p: nnx.merge(graphdef, p).logits_and_aux_loss(batch["inputs"]))(params)
  tx = optax.adam(1e-2)
  params = to_scanned(params, 1)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=tx.init(params), bad_steps=zero,
                     skipped_steps=zero)
  step = jit(make_train_step(scan_graphdef, tx, aux_loss_coef=0.01,
                             lr_schedule=optax.constant_schedule(1e-2)))
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    assert np.isfinite(losses[-1]) and int(state.skipped_steps) == 0
    assert 0.0 < float(metrics["aux_loss"]) <= 2 * 4.0  # each layer at most E
    if len(losses) == 1:
      np.testing.assert_allclose(metrics["aux_loss"], aux, rtol=1e-5)
  assert losses[-1] < 0.7 * losses[0], losses


def test_sequence_axis_matches_one_device(on_devices):
  """Under a mesh with a "sequence" axis the layer runs the masked form sequence-parallel (LASP-2
  over the M memories' heads): loss and gradients equal one device's gathered form, with packed
  documents and shards of two chunks (chunk 3, 6 tokens per shard)."""
  on_devices(sequence_mesh_check("mom", dict(chunk_size=3), sharded_op=True))


def test_flops_count_the_form_that_runs(on_devices):
  """The gathered form's FLOPs (P T tokens per head) where it runs; under a sequence mesh, where
  the layer switches to the masked form, the masked count (M T), as a masked layer reports."""
  on_devices("""
import jax
from flax import nnx
from memzoo.models.layers import registry
from memzoo.train.config import base_config

cfg = base_config().model
cfg.update(d_model=32, num_heads=2)
build = lambda form: (cfg.mom.update(form=form),
                      registry.build("mixer", "mom", cfg, rngs=nnx.Rngs(0)))[1]
gathered, masked = build("gathered"), build("masked")
assert gathered.flops(2, 64) < masked.flops(2, 64)
mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
with jax.set_mesh(mesh):
  assert gathered.flops(2, 64) == masked.flops(2, 64)
""")
