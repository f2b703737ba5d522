"""The memory-layer studies' configs: their models have the FLOPs per token they claim, and every
run of the capacity sweep, as `memzoo-sweep` passes it, evaluates the whole fact set."""

import pytest
from conftest import REPO_ROOT

from memzoo.data import tasks
from memzoo.experiments import sweep
from memzoo.experiments.equal_flops import ffn_flops_per_token, swiglu_width
from memzoo.train.config import data_options, load_module


def test_swiglu_width_is_the_closest_multiple():
  assert swiglu_width(6 * 64 * 200, 64) == 192 and swiglu_width(6 * 64 * 230, 64) == 256
  assert swiglu_width(6 * 32 * 133.4, 32, multiple=1) == 133
  assert swiglu_width(1.0, 64) == 64  # never zero


def test_shakespeare_pkm_matches_the_dense_default_exactly():
  module = load_module(str(REPO_ROOT / "configs/shakespeare_pkm.py"))
  model = module.get_config().model
  assert ffn_flops_per_token(model, "pkm") == ffn_flops_per_token(model, "swiglu") == 294_912
  assert module.get_sweep() == [{"model.memory_ffn": "swiglu"}, {"model.memory_ffn": "pkm"}]


def test_capacity_models_match_and_every_run_evaluates_every_fact(tmp_path):
  config_file = str(REPO_ROOT / "configs/memory_capacity.py")
  model = load_module(config_file).get_config().model
  pkm = ffn_flops_per_token(model, "pkm")
  for name in ("swiglu", "peer"):
    assert ffn_flops_per_token(model, name) == pytest.approx(pkm, rel=0.01), name
  runs = sweep.expand(config_file, tmp_path)
  sizes = []
  for run in runs:
    config = sweep.parse_train_flags(run.flags).copy_and_resolve_references()
    task = tasks.build_task(data_options(config))
    val, batch = task.num_examples["val"], config.train.batch_size
    assert val * task.facts_per_seq >= task.num_facts  # the val split holds every fact
    assert val % batch == 0 and config.train.eval_steps * batch == val  # and evals read all of it
    sizes.append(task.num_facts)
  assert sorted(sizes) == sorted(3 * [2 ** 10, 2 ** 12, 2 ** 14])
