"""The contract every registered mixer keeps (memzoo/models/README.md), checked for all of them:
causal, documents isolated by segment_ids, prefill + step == forward, logical axes on every param,
a one-line error for a wrongly shaped input, and an analytic FLOP count that agrees with XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memzoo.models.layers import registry
from memzoo.models.layers.linear_mixer import LinearMixer
from memzoo.train.config import base_config

registry.lookup("mixer", "attention")  # registers the built-in layers
MIXERS = sorted(registry.REGISTRIES["mixer"])
# Registered mixers with their defaults, plus options that change a mixer's structure.
VARIANTS = [(name, {}) for name in MIXERS] + [("attention", {"conv_size": 4}),
                                              ("gla", {"conv_size": 4})]
D, HEADS, T = 32, 2, 12


def build(name, kind="mixer", d_model=D, **options):
  model_cfg = base_config().model
  model_cfg.update(d_model=d_model, num_heads=HEADS, vocab_size=11)
  if kind == "ffn" and name in ("pkm", "peer"):
    model_cfg[name].update(n_keys=16, topk=4)
  model_cfg[name].update(options)
  return registry.build(kind, name, model_cfg, rngs=nnx.Rngs(0))


def variant_id(variant):
  name, options = variant
  return ",".join([name] + [f"{key}={value}" for key, value in options.items()])


@pytest.fixture(scope="module", params=VARIANTS, ids=variant_id)
def mixer(request):
  name, options = request.param
  return name, build(name, **options)


def inputs(seed=0, length=T):
  return jax.random.normal(jax.random.key(seed), (2, length, D), jnp.float32)


def test_every_parameter_has_logical_axes(mixer):
  name, layer = mixer
  for path, var in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == var.get_value().ndim, (name, path, axes)


def test_causal(mixer):
  _, layer = mixer
  forward = nnx.jit(lambda m, x: m(x))
  x = inputs()
  y = forward(layer, x)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  changed = forward(layer, x.at[:, 7:].add(1.0))
  np.testing.assert_allclose(changed[:, :7], y[:, :7], atol=1e-5, rtol=1e-5)


def test_segments_are_isolated(mixer):
  _, layer = mixer
  forward = nnx.jit(lambda m, x, s: m(x, segment_ids=s))
  x = inputs(1)
  segment_ids = jnp.array([[0] * 5 + [1] * 7, [3] * 9 + [4] * 3])
  packed = forward(layer, x, segment_ids)
  alone = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(packed[0, 5:], alone(layer, x[:1, 5:])[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(packed[1, 9:], alone(layer, x[1:, 9:])[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(packed[1, :9], alone(layer, x[1:, :9])[0], atol=1e-4, rtol=1e-4)


def test_prefill_then_step_equals_forward(mixer):
  _, layer = mixer
  x = inputs(2)
  full = nnx.jit(lambda m, x: m(x))(layer, x)
  state = layer.init_state(2, T)
  y, state = nnx.jit(lambda m, x, s: m.prefill(x, s))(layer, x[:, :5], state)
  outs = [y]
  step = nnx.jit(lambda m, x, s: m.step(x, s))
  for t in range(5, T):
    y_t, state = step(layer, x[:, t], state)
    outs.append(y_t[:, None])
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)


def test_wrong_inputs_fail_with_one_line_naming_them(mixer):
  """A 2-D, integer or wrongly wide x fails at the entry point with one line saying what x must
  be, not inside a reshape."""
  _, layer = mixer
  x, state = inputs(), layer.init_state(2, T)
  wrong = {"__call__": lambda v: layer(v), "prefill": lambda v: layer.prefill(v, state),
           "step": lambda v: layer.step(v, state)}
  cases = [("__call__", x[0], r"x must be a float \[B, T, d_model\] array"),
           ("__call__", jnp.zeros((2, T), jnp.int32), "embed the tokens first"),
           ("__call__", x[..., :-1], rf"does not end in this layer's input dims \({D},\)"),
           ("prefill", x[0], r"x must be a float \[B, T, d_model\] array"),
           ("step", x, r"x must be a float \[B, d_model\] array")]
  for entry, value, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      wrong[entry](value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(registry.REGISTRIES["ffn"]))
def test_feed_forward_layers_keep_shape_and_name_their_axes(name):
  layer = build(name, "ffn")
  x = inputs(3)
  assert nnx.jit(lambda m, x: m(x))(layer, x).shape == x.shape
  for path, var in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == var.get_value().ndim, (name, path, axes)
  if name != "identity":  # takes any width
    with pytest.raises(ValueError, match=rf"does not end in this layer's input dims \({D},\)"):
      layer(x[..., :-1])


# XLA's cost analysis counts a loop body once, whatever its trip count, so the FLOP check runs one
# chunk / one key block (T = 64 <= every default chunk and block size). It reads the HLO before
# optimisation: the optimised HLO folds away products with the zero initial state of a first chunk.
# XLA also counts elementwise work (norms, rope, softmax, gates, masks), which `flops` leaves out:
# the analytic count is at most XLA's, and within FLOPS_RTOL of it at d_model 256 (GLA's
# vector-gate masks are ~4% of its count; the Titans memory's GELU and its derivative at the hidden
# width, gradient weights and gate products ~6.5% of LMM's, ~6% of MAC's).
FLOPS_D, FLOPS_T = 256, 64
FLOPS_RTOL = {"lmm": 0.08, "mac": 0.08}  # 0.05 for the others
# MAC runs segments of memory chunks: one segment of one chunk keeps to one loop iteration. MoM's
# gathered form runs its memories over P T = 3 T sorted tokens (top-2 + the shared memory). The
# linear mixers scan their chunks (on CPU 32 tokens by default): one chunk of T.
ONE_ITERATION = {"mac": dict(segment_len=FLOPS_T, memory=dict(chunk_size=FLOPS_T)),
                 "mom": dict(chunk_size=3 * FLOPS_T),
                 **{n: dict(chunk_size=FLOPS_T) for n, cls in registry.REGISTRIES["mixer"].items()
                    if issubclass(cls, LinearMixer)}}


@pytest.mark.parametrize("kind,name,options",
                         [("mixer", n, o) for n, o in VARIANTS] +
                         [("ffn", n, {}) for n in sorted(registry.REGISTRIES["ffn"])])
def test_flops_agree_with_xla(kind, name, options):
  options = {**ONE_ITERATION.get(name, {}), **options}
  layer = nnx.eval_shape(lambda: build(name, kind, d_model=FLOPS_D, **options))  # shapes only
  graphdef, params = nnx.split(layer)
  x = jax.ShapeDtypeStruct((2, FLOPS_T, FLOPS_D), jnp.float32)
  forward = lambda p, x: nnx.capture(nnx.merge(graphdef, p), nnx.Intermediate)(x)[0]
  lowered = jax.jit(forward).lower(params, x)
  xla = lowered.cost_analysis().get("flops", 0.0)
  ours = layer.flops(2, FLOPS_T)
  assert isinstance(ours, int) and layer.backward_flops(2, FLOPS_T) == 2 * ours
  assert (1 - FLOPS_RTOL.get(name, 0.05)) * xla <= ours <= xla, (name, ours, xla)
