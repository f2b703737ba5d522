"""Memory tables sharded over a mesh of 8 CPU devices give the same outputs and gradients as
unsharded ones (the JAX counterpart of Meta's validate_distributed_embeddingbag.py)."""

SHARDED_CHECK = """
import warnings
warnings.simplefilter("ignore", DeprecationWarning)
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from memzoo.models.backbone import LanguageModel
from memzoo.models.layers import registry

mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
is_var = lambda v: isinstance(v, nnx.Variable)


def check(module, x, rules, sharded_tables):
  '''module(x) and its gradients, with parameters sharded by the logical-axis `rules` and x split
  over `data`, equal the single-device result; the memory tables really are split 8 ways.'''
  graphdef, params = nnx.split(module)
  forward = lambda p, x: nnx.merge(graphdef, p)(x)
  cot = jax.random.normal(jax.random.key(2), jax.eval_shape(forward, params, x).shape)
  def loss(p, x):
    y = forward(p, x)
    return jnp.sum(y * cot), y
  step = jax.jit(jax.value_and_grad(loss, argnums=0, has_aux=True))
  (_, y), grads = step(params, x)
  spec = lambda v: P(*(rules.get(a) for a in v.get_metadata()["out_sharding"]))
  sharded = jax.device_put(params, jax.tree.map(lambda v: NamedSharding(mesh, spec(v)), params,
                                                is_leaf=is_var))
  (_, ys), sgrads = step(sharded, jax.device_put(x, NamedSharding(mesh, P("data"))))
  tables = {jax.tree_util.keystr(path, simple=True, separator="/"): v[...]
            for path, v in jax.tree_util.tree_leaves_with_path(sharded, is_leaf=is_var)
            if v.get_metadata().get("optimizer_group") == "memory_values"}
  assert len(tables) == sharded_tables, tables.keys()
  np.testing.assert_allclose(ys, y, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), sgrads, grads)
  return tables


# PEER experts: rows over `tensor`.
x = jax.random.normal(jax.random.key(1), (4, 6, 16))
peer = registry.build("ffn", "peer", {"d_model": 16, "peer": dict(n_keys=8, k_dim=8, topk=4)},
                      rngs=nnx.Rngs(0))
tables = check(peer, x, {"memory": "tensor"}, 2)
assert tables["down"].addressable_shards[0].data.shape == (16, 16)

# An LM whose pkm table (owned by the model) is split 2 x 4: rows over `data`, columns over
# `tensor` (Meta's column-wise "memory parallel" layout), plus Engram rows over `data`.
cfg = dict(vocab_size=64, d_model=32, num_layers=1, mixers=("attention",), num_heads=4,
           memory_layers=(0,), memory_share_values=True, engram_layers=(0,),
           pkm=dict(n_keys=8, heads=4, topk=4, k_dim=16), engram=dict(ngram_heads=2, ngram_dim=16))
tokens = jax.random.randint(jax.random.key(3), (4, 9), 0, 64)
rules = {"mlp": "tensor", "memory": "data", "heads": "tensor", "kv_heads": "tensor"}
tables = check(LanguageModel(cfg, rngs=nnx.Rngs(0)), tokens, rules, 2)
assert tables["memory_values"].addressable_shards[0].data.shape == (32, 8)
assert tables["stack/blocks/0/engram/table"].sharding.spec[0] == "data"
print("ok")
"""


def test_sharded_memory_tables_equal_unsharded_on_8_devices(on_devices):
  assert "ok" in on_devices(SHARDED_CHECK, devices=8)
