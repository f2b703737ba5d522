"""FLOP accounting: analytic counts against an independent jaxpr count (many chunks, every form)
and against XLA (the whole LM, forward and train step); the MFU peak and its cache.

(`test_mixer_contract.py` checks every registered layer's forward count against XLA.)
"""

import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from flop_count import dot_flops

from memzoo.models.backbone import LanguageModel
from memzoo.models.layers import registry
from memzoo.models.layers.common import ShortConv
from memzoo.models.ops.attention import (attention_flops, block_visible, make_tokens,
                                         split_blocks)
from memzoo.train import mfu
from memzoo.train.config import base_config
from memzoo.train.metrics import Throughput
from memzoo.train.step import token_stats


def abstract(kind, name, **options):
  model_cfg = {"d_model": 32, "num_heads": 2, name: options}
  return nnx.eval_shape(lambda: registry.build(kind, name, model_cfg, rngs=nnx.Rngs(0)))


def forward_dot_flops(layer, batch, length):
  graphdef, params = nnx.split(layer)
  x = jax.ShapeDtypeStruct((batch, length, 32), jnp.float32)
  return dot_flops(lambda p, x: nnx.merge(graphdef, p)(x), params, x)


# Titans' memory convs also filter the persistent tokens (MAG, MAL) or segment overlaps (MAC), so
# the formula below for the conv FLOPs holds for LMM alone; the composites run without convs.
TITANS_MEMORY = dict(chunk_size=8, conv=False)


@pytest.mark.parametrize("name,options", [
    ("retention", dict(chunk_size=16)), ("retention", dict(mode="parallel")),
    ("retention", dict(mode="recurrent")), ("gla", dict(chunk_size=32)),
    ("gla", dict(chunk_size=24)), ("linear_attention", dict(feature_map="taylor2", feature_dim=4)),
    ("deltanet", dict(chunk_size=16)), ("gated_deltanet", dict(chunk_size=32)),
    ("gated_deltanet", dict(mode="recurrent")), ("attention", dict(impl="naive")),
    ("lmm", dict(chunk_size=16)), ("lmm", dict(chunk_size=16, omega_window=3, poly_degree=2,
                                                depth=1, conv=False)),
    ("lmm", dict(chunk_size=8, muon=True, ns_steps=2, omega_window=2, conv=False)),
    ("mag", dict(window=8, num_persistent=4, block_q=16, memory=TITANS_MEMORY)),
    ("mal", dict(window=8, num_persistent=4, block_q=16, memory=TITANS_MEMORY)),
    ("mac", dict(segment_len=16, num_persistent=4, memory=TITANS_MEMORY))])
def test_layer_counts_equal_the_matmuls_of_its_jaxpr(name, options):
  """Over several chunks (T = 75 is no multiple of any chunk size): the analytic count is exactly
  the jaxpr's dot FLOPs plus the short convs (multiply-adds written elementwise)."""
  layer = abstract("mixer", name, **options)
  convs = sum(m.flops(3 * 75) for _, m in nnx.iter_modules(layer) if isinstance(m, ShortConv))
  assert layer.flops(3, 75) == forward_dot_flops(layer, 3, 75) + convs


@pytest.mark.parametrize("length,block_q,block_k,window", [
    (75, 16, 32, None), (64, 16, 16, None), (100, 32, 8, 20), (33, 64, 64, 5)])
def test_blockwise_pairs_are_the_blocks_the_kernel_does_not_skip(length, block_q, block_k,
                                                                 window):
  tokens = make_tokens(jnp.arange(length)[None])
  q_blocks, k_blocks = split_blocks(tokens, block_q), split_blocks(tokens, block_k)
  pair = lambda q, k: block_visible(q, k, causal=True, window=window)
  visible = jax.jit(jax.vmap(jax.vmap(pair, (None, 0)), (0, None)))(q_blocks, k_blocks)
  visible = int(jnp.sum(visible))
  flops = attention_flops(1, length, length, 1, 1, 1, impl="blockwise", window=window,
                          block_q=block_q, block_k=block_k)
  assert flops == 2 * 2 * visible * block_q * block_k


def lm_config(**model):
  cfg = base_config().model
  cfg.update(dict(d_model=128, num_heads=2, vocab_size=300, num_layers=3,
                  mixers=("attention", "gated_deltanet", "gla")), **model)
  cfg.pkm.update(n_keys=16, topk=4, heads=2)
  cfg.engram.update(ngram_dim=64, ngram_heads=2, table_size=64)
  return cfg


def xla_flops(fn, *args):
  return jax.jit(fn).lower(*args).cost_analysis()["flops"]


def test_language_model_counts_agree_with_xla():
  """One chunk / key block per sequence of 32 tokens (XLA counts loop bodies once). Forward: at
  most XLA's count (which adds elementwise work), within 5%. Train step: within 5% either way (XLA
  also skips the gradients of products with the zero initial state)."""
  model = nnx.eval_shape(lambda: LanguageModel(lm_config(memory_layers=(1,), engram_layers=(2,)),
                                               rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model)
  tokens = jax.ShapeDtypeStruct((2, 32), jnp.int32)

  def logits(p, t):
    return nnx.capture(nnx.merge(graphdef, p), nnx.Intermediate)(t)[0]

  def loss(p, t):
    return token_stats(logits(p, t), t)["loss_sum"]

  forward, train = xla_flops(logits, params, tokens), xla_flops(jax.grad(loss), params, tokens)
  assert 0.95 * forward <= model.flops(2, 32) <= forward
  assert abs(model.train_flops(2, 32) / train - 1) < 0.05
  assert model.train_flops(2, 32) == 3 * model.flops(2, 32)


def test_scanned_layers_count_like_unrolled_ones():
  build = lambda scan: nnx.eval_shape(lambda: LanguageModel(
      lm_config(num_layers=6, scan_layers=scan), rngs=nnx.Rngs(0)))
  assert build(True).flops(2, 100) == build(False).flops(2, 100) > 0


def test_table_peak_matches_device_kinds_and_dtypes():
  assert mfu.table_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert mfu.table_peak("NVIDIA H100 80GB HBM3", jnp.bfloat16) == 989e12
  assert mfu.table_peak("TPU v5 lite", "bfloat16") == 197e12
  assert mfu.table_peak("NVIDIA H100 80GB HBM3", "float32") is None  # measured instead
  assert mfu.table_peak("cpu", "bfloat16") is None


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("MEMZOO_CACHE_DIR", str(tmp_path))
  measured = []
  monkeypatch.setattr(mfu, "measure_peak", lambda dtype: measured.append(dtype) or 5e10)
  assert mfu.device_peak("float32")[0] == 5e10
  peak, source = mfu.device_peak("float32")
  assert peak == 5e10 and "cached" in source and measured == ["float32"]
  mfu.device_peak("float32", remeasure=True)
  assert len(measured) == 2
  (key, entry), = json.loads((tmp_path / "peak_flops.json").read_text()).items()
  assert key.startswith("cpu | ") and key.endswith("| float32") and entry["flops_per_s"] == 5e10


def test_cpu_peak_measured_the_old_way_is_measured_again(tmp_path, monkeypatch):
  monkeypatch.setenv("MEMZOO_CACHE_DIR", str(tmp_path))
  key = mfu._device_key("bfloat16")
  old = {key: {"flops_per_s": 2.6e11, "date": "2026-12-05 03:16", "jax": jax.__version__}}
  (tmp_path / "peak_flops.json").write_text(json.dumps(old))
  monkeypatch.setattr(mfu, "measure_peak", lambda dtype: 9.5e11)
  assert mfu.device_peak("bfloat16")[0] == 9.5e11
  entry = json.loads((tmp_path / "peak_flops.json").read_text())[key]
  assert entry["flops_per_s"] == 9.5e11 and entry["method"] == mfu.MEASURE_METHOD


def test_measured_peak_is_a_positive_rate():
  assert mfu.measure_peak(jnp.float32, size=64, repeats=1, matmuls=2) > 0


def test_throughput_reports_model_flops_and_mfu(monkeypatch):
  clock = iter([0.0, 10.0, 12.0, 16.0])
  monkeypatch.setattr("time.perf_counter", lambda: next(clock))
  meter = Throughput(tokens_per_step=100, flops_per_step=1e9, peak_flops_per_s=1e10)
  assert meter.rate(0) == {}
  assert meter.rate(4) == {"tokens_per_s": 200.0, "model_flops_per_s": 2e9, "mfu": 0.2}
  assert Throughput.summary(meter.rate(6)) == "50 tok/s  MFU 5.0%"
