"""Engram: the n-gram hash (deterministic, pinned, collision rate as computed), the layer against a
float64 reference with per-position Python hashing, and prefill + step == forward."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memzoo.models.layers.engram import Engram
from memzoo.models.ops.ngram_hash import (PAD_TOKEN, expected_collision_rate, hash_multipliers,
                                          is_prime, ngram_hash, primes_from, token_windows)

pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow:DeprecationWarning")

D, VOCAB = 16, 40


def python_row(window, multipliers, prime):
  """The hash of one n-gram with Python integers: XOR of token * multiplier mod 2^32, mod prime."""
  word = 0
  for token, m in zip(window, multipliers):
    word ^= ((int(token) & 0xFFFFFFFF) * int(m)) & 0xFFFFFFFF
  return word % prime


def test_hash_constants_are_pinned():
  # Changing these changes which rows every trained checkpoint reads.
  np.testing.assert_array_equal(hash_multipliers(2, 2, 0, 0),
                                [[1437862607, 2982847745], [409700889, 1938747601]])
  np.testing.assert_array_equal(primes_from(250, 4), [251, 257, 263, 269])
  sieve = np.ones(2000, bool)
  sieve[:2] = False
  for p in range(2, 45):
    sieve[2 * p::p] = False
  assert [n for n in range(2000) if is_prime(n)] == list(np.flatnonzero(sieve))
  assert np.all(hash_multipliers(3, 4, 7, 1) % 2 == 1)
  assert not np.array_equal(hash_multipliers(3, 4, 7, 1), hash_multipliers(3, 4, 7, 2))


def test_ngram_hash_equals_python_integer_reference():
  rng = np.random.default_rng(0)
  windows = rng.integers(-1, 2 ** 31 - 1, size=(4, 5, 3))  # -1 is PAD_TOKEN
  windows[0, 0] = PAD_TOKEN
  multipliers, primes = hash_multipliers(3, 2, 5), primes_from(1000, 2)
  rows = np.asarray(ngram_hash(jnp.asarray(windows, jnp.int32), multipliers, primes))
  expected = [[[python_row(w, multipliers[h], primes[h]) for h in range(2)] for w in row]
              for row in windows]
  np.testing.assert_array_equal(rows, expected)


@pytest.mark.parametrize("vocab,order,size", [(256, 2, 65536), (20, 3, 20000)])
def test_collision_rate_matches_the_analytic_rate(vocab, order, size):
  grams = np.array(list(itertools.product(range(vocab), repeat=order)))[:, ::-1]
  primes = primes_from(size, 4)
  rows = np.asarray(ngram_hash(jnp.asarray(grams, jnp.int32), hash_multipliers(order, 4, 0),
                               primes))
  for head, prime in enumerate(primes):
    occupancy = np.bincount(rows[:, head], minlength=prime)
    measured = np.mean(occupancy[rows[:, head]] >= 2)
    rate = expected_collision_rate(len(grams), prime)
    sigma = np.sqrt(rate * (1 - rate) / len(grams))
    assert abs(measured - rate) < 6 * sigma, (head, measured, rate)
  # Heads hash independently: sharing rows in all 4 heads has probability ~ 1/size^4, i.e. never.
  assert len(np.unique(rows, axis=0)) == len(grams)


def test_token_windows_use_history_and_stop_at_document_starts():
  tokens = jnp.array([[5, 6, 7, 8]])
  windows, history = token_windows(tokens, 3, history=jnp.array([[3, 4]]))
  np.testing.assert_array_equal(windows[0], [[5, 4, 3], [6, 5, 4], [7, 6, 5], [8, 7, 6]])
  np.testing.assert_array_equal(history, [[7, 8]])
  windows, _ = token_windows(tokens, 3, segment_ids=jnp.array([[1, 1, 2, 2]]))
  p = PAD_TOKEN
  np.testing.assert_array_equal(windows[0], [[5, p, p], [6, 5, p], [7, p, p], [8, 7, p]])


def _engram(dtype=jnp.float32, layer_index=0):
  return Engram(D, VOCAB, max_ngram=3, ngram_heads=2, ngram_dim=8, conv_kernel=3,
                layer_index=layer_index, param_dtype=dtype, rngs=nnx.Rngs(0))


def engram_reference(p, layer, x, tokens, segment_ids):
  """Per-position Python hashing, a dense table lookup and an explicit masked conv, in float64."""
  tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
  b, t = tokens.shape
  rows = np.zeros((b, t, 2 * 2), np.int64)
  for i, j in np.ndindex(b, t):
    previous = [tokens[i, j - s] if j - s >= 0 and segment_ids[i, j - s] == segment_ids[i, j]
                else PAD_TOKEN for s in range(3)]
    for o, n in enumerate(layer.orders):
      for h in range(2):
        rows[i, j, 2 * o + h] = layer.offsets[o][h] + python_row(
            previous[:n], layer.multipliers[o][h], layer.primes[o][h])
  e = p["table"][...][rows].reshape(b, t, -1)
  rms = lambda v, scale: v / jnp.sqrt(jnp.mean(v * v, -1, keepdims=True) + 1e-6) * scale
  k = rms(e @ p["key"]["kernel"][...], p["key_norm"]["scale"][...])
  h = rms(x, p["hidden_norm"]["scale"][...])
  s = jnp.sum(k * h, -1, keepdims=True) / np.sqrt(D)
  v = jax.nn.sigmoid(jnp.sign(s) * jnp.sqrt(jnp.abs(s))) * (e @ p["value"]["kernel"][...])
  c = rms(v, p["conv_norm"]["scale"][...])
  w = p["conv"]["weight"][...]  # [K, D]; w[-1] multiplies the current token
  conv = [sum(w[-1 - lag] * c[:, j - lag] * (segment_ids[:, j - lag] == segment_ids[:, j])[:, None]
              for lag in range(3) if j - lag >= 0) for j in range(t)]
  return v + jax.nn.silu(jnp.stack(conv, 1))


def test_engram_and_gradients_equal_float64_reference():
  with jax.enable_x64(True):
    layer = _engram(jnp.float64)
    graphdef, params = nnx.split(layer)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, D)))
    tokens = jnp.asarray(rng.integers(0, VOCAB, size=(2, 9)))
    segment_ids = jnp.array([[1] * 9, [1] * 4 + [2] * 5])
    cotangent = jnp.asarray(rng.normal(size=x.shape))
    forward = lambda p, x: nnx.merge(graphdef, p)(x, tokens, segment_ids=segment_ids)
    reference = lambda p, x: engram_reference(p, layer, x, tokens, segment_ids)
    outputs = []
    for f in (forward, reference):
      loss = lambda p, x: (jnp.sum(f(p, x) * cotangent), f(p, x))
      outputs.append(jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x))
    ((_, y), grads), ((_, y_ref), grads_ref) = outputs
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6),
                 grads, grads_ref)


def test_prefill_then_steps_equal_forward():
  layer = _engram()
  graphdef, params = nnx.split(layer)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 7, D)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, VOCAB, size=(2, 7)))
  full = jax.jit(lambda p, x, t: nnx.merge(graphdef, p)(x, t))(params, x, tokens)
  prefill = jax.jit(lambda p, x, t, s: nnx.merge(graphdef, p).prefill(x, t, s))
  y, state = prefill(params, x[:, :3], tokens[:, :3], layer.init_state(2))
  ys = [y]
  for i in range(3, 7):
    y, state = prefill(params, x[:, i:i + 1], tokens[:, i:i + 1], state)
    ys.append(y)
  np.testing.assert_allclose(jnp.concatenate(ys, 1), full, rtol=1e-5, atol=1e-5)


def test_layers_hash_deterministically_and_differently():
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, size=(2, 6)))
  rows = lambda layer: np.asarray(layer.rows(tokens)[0])
  np.testing.assert_array_equal(rows(_engram()), rows(_engram()))
  assert not np.array_equal(rows(_engram(layer_index=0)), rows(_engram(layer_index=1)))


def test_engram_rejects_bad_options():
  with pytest.raises(ValueError, match="max_ngram"):
    Engram(D, VOCAB, max_ngram=1, layer_index=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ngram_dim"):
    Engram(D, VOCAB, ngram_heads=3, ngram_dim=8, layer_index=0, rngs=nnx.Rngs(0))
