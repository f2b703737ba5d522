"""Sequence-parallel linear-recurrent ops and short conv on 8 CPU devices == the same op on one.

Every case checks outputs, the final state and the gradients of a random cotangent on both with
respect to every input (initial state included), with an initial state and packed documents whose
boundaries fall on, and between, shard boundaries. Shards are 11 tokens long against chunks of 4.
"""

import jax
import jax.numpy as jnp
import pytest

from memzoo.models.ops.linear_sequence_parallel import sequence_sharded_recurrence

_PRELUDE = """
import functools
import jax, jax.numpy as jnp, numpy as np
from memzoo.models.ops.conv import causal_conv1d
from memzoo.models.ops.delta_rule import delta_rule
from memzoo.models.ops.linear_attention import linear_attention
from memzoo.models.ops.linear_sequence_parallel import (sequence_sharded_conv1d,
                                                        sequence_sharded_recurrence)

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
mesh = jax.make_mesh((8,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)
normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)

def documents(b, t, starts):
  # Row 0 starts documents at `starts`; the other rows hold one document.
  ids = np.zeros((b, t), np.int32)
  for s in starts:
    ids[0, s:] += 1
  return jnp.asarray(ids)

@functools.partial(jit, static_argnames="fn")
def value_and_grads(fn, args, cts):
  outs, vjp = jax.vjp(fn, args)
  return outs, vjp(cts)[0]

def check(fn, sharded_fn, args, what, tol=1e-5):
  # (outputs, grads) of fn on one device vs sharded_fn on `mesh`: max |error| / max |reference|.
  cts = jax.tree.map(lambda a: normal(*a.shape), jax.eval_shape(fn, args))
  want = value_and_grads(fn, args, cts)
  with jax.set_mesh(mesh):
    got = value_and_grads(sharded_fn, args, cts)
  for (path, g), w in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(want)):
    err = float(jnp.max(jnp.abs(g - w)) / jnp.maximum(jnp.max(jnp.abs(w)), 1e-30))
    assert err < tol, f"{what} {jax.tree_util.keystr(path)}: relative error {err:.2e}"
"""


def test_sequence_parallel_recurrence_matches_one_device(on_devices):
  on_devices(_PRELUDE + """
b, t, h, dk, dv = 2, 85, 2, 8, 4     # T = 85 pads to 88: 8 shards of 11 tokens
segment_ids = documents(b, t, (22, 33, 50))  # on the boundaries of shards 2 and 3, inside 4
k = normal(b, t, h, dk)
base = dict(q=normal(b, t, h, dk), k=k / jnp.linalg.norm(k, axis=-1, keepdims=True),
            v=normal(b, t, h, dv), initial_state=normal(b, h, dk, dv))
gate = lambda *shape: -jax.nn.softplus(normal(*shape))
cases = {  # name: (op, extra arguments)
    "linear attention, scalar decay": (linear_attention, dict(log_decay=gate(b, t, h))),
    "linear attention, vector decay": (linear_attention, dict(log_decay=gate(b, t, h, dk))),
    "gated delta rule": (delta_rule, dict(beta=jax.nn.sigmoid(normal(b, t, h)),
                                          log_decay=gate(b, t, h))),
}
for name, (op, extra) in cases.items():
  call = lambda fn, a: fn(**a, segment_ids=segment_ids, chunk_size=4)
  check(functools.partial(call, op), functools.partial(call, sequence_sharded_recurrence),
        {**base, **extra}, name)
""")


def test_sequence_parallel_conv_matches_one_device(on_devices):
  on_devices(_PRELUDE + """
b, t, c = 2, 45, 3                   # shards of 6 tokens (the last padded), kernel 4
segment_ids = documents(b, t, (12, 16))
args = dict(x=normal(b, t, c), weight=normal(4, c), initial_state=normal(b, 3, c))
for ids in (None, segment_ids):
  call = lambda fn, a: fn(**a, segment_ids=ids)
  check(functools.partial(call, causal_conv1d), functools.partial(call, sequence_sharded_conv1d),
        args, f"conv, segment ids: {ids is not None}")
""")


def test_sequence_sharded_recurrence_needs_the_axis():
  q = jnp.zeros((1, 4, 1, 2))
  with pytest.raises(ValueError, match="have no 'sequence'"):
    sequence_sharded_recurrence(q, q, q, mesh=jax.sharding.AbstractMesh((1,), ("data",)))
