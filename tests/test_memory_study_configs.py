"""The memory-layer studies' configs: their models have the FLOPs per token they claim, and every
run of the capacity sweep evaluates the whole fact set."""

import pytest

from memzoo.data import tasks
from memzoo.experiments.equal_flops import ffn_flops_per_token, swiglu_width
from memzoo.train.config import data_options, load_module


def test_swiglu_width_is_the_closest_multiple():
  assert swiglu_width(6 * 64 * 200, 64) == 192 and swiglu_width(6 * 64 * 230, 64) == 256
  assert swiglu_width(6 * 32 * 133.4, 32, multiple=1) == 133
  assert swiglu_width(1.0, 64) == 64  # never zero


def test_shakespeare_pkm_matches_the_dense_default_exactly():
  module = load_module("configs/shakespeare_pkm.py")
  model = module.get_config().model
  assert ffn_flops_per_token(model, "pkm") == ffn_flops_per_token(model, "swiglu") == 294_912
  assert module.get_sweep() == [{"model.memory_ffn": "swiglu"}, {"model.memory_ffn": "pkm"}]


def test_capacity_models_match_and_every_run_evaluates_every_fact():
  module = load_module("configs/memory_capacity.py")
  sweep = module.get_sweep()
  assert len(sweep) == 9
  model = module.get_config().model
  pkm = ffn_flops_per_token(model, "pkm")
  for name in ("swiglu", "peer"):
    assert ffn_flops_per_token(model, name) == pytest.approx(pkm, rel=0.01), name
  for overrides in sweep:
    config = module.get_config()
    config.data.num_facts = overrides["data.num_facts"]
    task = tasks.build_task(data_options(config))
    val, batch = task.num_examples["val"], config.train.batch_size
    assert val * task.facts_per_seq >= task.num_facts  # the val split holds every fact
    assert val % batch == 0 and config.train.eval_steps * batch == val  # and evals read all of it
