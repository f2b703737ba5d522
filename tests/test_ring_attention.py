"""Ring attention and sequence-sharded decoding on 8 CPU devices == dense attention on one."""

import jax.numpy as jnp
import numpy as np

from memzoo.models.ops.sequence_parallel import zigzag_order, zigzag_restore

# Shared by the subprocesses: random inputs and `value_and_grads(f, q, k, v, ct)`.
_PRELUDE = """
import jax, jax.numpy as jnp, numpy as np
from memzoo.models.ops.attention import attention

def inputs(seed, b, t, h, kh, d):
  rng = np.random.default_rng(seed)
  shapes = [(b, t, h, d), (b, t, kh, d), (b, t, kh, d), (b, t, h, d)]
  return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]

def segments(b, t, seed):
  starts = np.random.default_rng(seed).random((b, t)) < 0.1
  starts[:, 0] = True
  return jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)

def value_and_grads(f, q, k, v, ct):
  out, vjp = jax.vjp(f, q, k, v)
  return (out,) + vjp(ct)

def assert_close(got, want, what, tol=1e-5):
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{what}: {name}")
"""


def test_zigzag_order_and_restore():
  x = jnp.arange(2 * 16).reshape(2, 16)
  np.testing.assert_array_equal(zigzag_order(x, 2)[0], [0, 1, 2, 3, 12, 13, 14, 15,
                                                        4, 5, 6, 7, 8, 9, 10, 11])
  for shards in (1, 2, 4, 8):
    np.testing.assert_array_equal(zigzag_restore(zigzag_order(x, shards), shards), x)


def test_ring_attention_matches_dense(on_devices):
  on_devices(_PRELUDE + """
from jax.sharding import PartitionSpec as P
from memzoo.models.ops.ring_attention import ring_self_attention
from memzoo.models.ops.sequence_parallel import zigzag_order, zigzag_shard, zigzag_unshard

mesh = jax.make_mesh((8,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
cases = [  # (name, T, kv heads, ring options, attention options)
    ("causal zigzag GQA segments T=75", 75, 2, dict(block_q=4, block_k=3),
     dict(causal=True, segments=True)),
    ("non-causal segments MQA", 72, 1, dict(block_q=4, block_k=4),
     dict(causal=False, segments=True)),
    ("causal contiguous window", 64, 4, dict(load_balance=False, block_q=3, block_k=8),
     dict(causal=True, window=13)),
]
for i, (name, t, kv_heads, ring_kw, kw) in enumerate(cases):
  q, k, v, ct = inputs(i, 2, t, 4, kv_heads, 8)
  if kw.pop("segments", False):
    kw["segment_ids"] = segments(2, t, i)
  dense = jax.jit(lambda q, k, v, ct: value_and_grads(lambda *a: attention(*a, **kw),
                                                      q, k, v, ct))
  ring = jax.jit(lambda q, k, v, ct: value_and_grads(
      lambda *a: ring_self_attention(*a, **kw, **ring_kw), q, k, v, ct))
  want = dense(q, k, v, ct)
  with jax.set_mesh(mesh):
    got = ring(q, k, v, ct)
  assert_close(got, want, name)

# On a mesh with explicit axes (jax.make_mesh's default) the inputs arrive sharded over it.
explicit = jax.make_mesh((8,), ("sequence",), axis_types=(jax.sharding.AxisType.Explicit,))
q, k, v, ct = inputs(7, 1, 64, 2, 2, 8)
want = value_and_grads(lambda *a: attention(*a, causal=True), q, k, v, ct)
with jax.set_mesh(explicit):
  sharded = [jax.device_put(a, P(None, "sequence")) for a in (q, k, v, ct)]
  got = jax.jit(lambda q, k, v, ct: value_and_grads(
      lambda *a: ring_self_attention(*a, causal=True, block_q=4, block_k=4), q, k, v, ct))(*sharded)
assert_close(got, want, "explicit mesh, no segment ids")

# The in-shard zigzag reordering equals the global one, and its inverse restores the input.
x = jnp.arange(2 * 32 * 3).reshape(2, 32, 3)
reorder = jax.shard_map(lambda a: (zigzag_shard(a, "sequence"),
                                   zigzag_unshard(zigzag_shard(a, "sequence"), "sequence")),
                        mesh=mesh, in_specs=P(None, "sequence"), out_specs=P(None, "sequence"))
shuffled, restored = jax.jit(reorder)(x)
np.testing.assert_array_equal(shuffled, zigzag_order(x, 8))
np.testing.assert_array_equal(restored, x)
""")


def test_sharded_cache_decode_matches_dense(on_devices):
  on_devices(_PRELUDE + """
from memzoo.models.ops.ring_attention import sharded_cache_attention, sharded_cache_write

mesh = jax.make_mesh((8,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
q, k_cache, v_cache, _ = inputs(0, 2, 48, 4, 2, 8)
q = q[:, :3]                                    # three new tokens at positions 29, 30, 31
new_k, new_v = k_cache[:, :3] + 1.0, v_cache[:, :3] - 1.0
slots = jnp.arange(48)
kv_positions = jnp.where(slots < 32, slots, 2 ** 30)[None]
q_positions = jnp.array([[29, 30, 31]])

# Write three new tokens at slots 29..31, then attend with a sliding window of 6 (the LM test
# decodes without a window).
def decode(q, k_cache, v_cache, write, attend):
  k_cache, v_cache = write(k_cache, new_k, 29), write(v_cache, new_v, 29)
  return attend(q, k_cache, v_cache, q_positions=q_positions, kv_positions=kv_positions,
                window=6), k_cache

dense_write = lambda c, u, s: jax.lax.dynamic_update_slice_in_dim(c, u, s, 1)
want, want_cache = jax.jit(lambda *a: decode(*a, dense_write, attention))(q, k_cache, v_cache)
with jax.set_mesh(mesh):
  attend = lambda *a, **kw: sharded_cache_attention(*a, **kw, block_q=2, block_k=4)
  got, got_cache = jax.jit(lambda *a: decode(*a, sharded_cache_write, attend))(
      q, k_cache, v_cache)
assert got_cache.sharding.spec[1] == "sequence", got_cache.sharding
np.testing.assert_array_equal(got_cache, want_cache)
np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
""")


def test_language_model_with_sequence_axis_matches_single_device(on_devices):
  """The same LM, gradients and cached decoding under a (data=2, sequence=4) mesh: the attention
  layers switch to ring attention / a sharded KV cache by themselves."""
  on_devices("""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from memzoo.models.backbone import LanguageModel

cfg = dict(vocab_size=37, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
           mixers=("attention",), attention=dict(impl="naive", block_q=4, block_k=4))
graphdef, params = nnx.split(nnx.jit(lambda: LanguageModel(cfg, rngs=nnx.Rngs(0)))())
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 37, (2, 36)), jnp.int32)
segment_ids = jnp.asarray(np.repeat([[0] * 31 + [1] * 5], 2, 0), jnp.int32)

@jax.jit
def loss_and_grads(params):
  def loss(params):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1], segment_ids=segment_ids[:, :-1])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
    return jnp.mean(nll), logits
  return jax.value_and_grad(loss, has_aux=True)(params)

@jax.jit
def decode(params):
  # logits of a 30-token prefill, then one step: the first document only
  lm = nnx.merge(graphdef, params)
  logits, state = lm.prefill(tokens[:, :30], lm.init_state(2, 40))
  step_logits, _ = lm.step(tokens[:, 30], state)
  return jnp.concatenate([logits, step_logits[:, None]], 1)

(want_loss, want_logits), want_grads = loss_and_grads(params)
with jax.set_mesh(jax.make_mesh((2, 4), ("data", "sequence"))):
  (got_loss, _), got_grads = loss_and_grads(params)
  got_logits = decode(params)
np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
for (path, g), w in zip(jax.tree.leaves_with_path(got_grads), jax.tree.leaves(want_grads)):
  np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
np.testing.assert_allclose(got_logits, want_logits[:, :31], rtol=1e-5, atol=1e-5)
""")
