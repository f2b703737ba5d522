"""The trainer in-process: logs, checkpoints, and resuming from a checkpoint bit for bit."""

import dataclasses
import json
import time

import jax
import pytest
import numpy as np
from flax import nnx
from helpers import tiny_config, train_steps

from memzoo.models.backbone import has_memory_tables
from memzoo.train import state as state_lib
from memzoo.train import trainer
from memzoo.train.step import make_eval_step


def read_metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_train_logs_evals_and_checkpoints(tmp_path):
  launch = time.time()
  result = trainer.train(tiny_config(), tmp_path)
  metrics = read_metrics(tmp_path)
  stamps = [m["time"] for m in metrics]  # unix seconds of each write, in order
  assert launch <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.time()
  train_steps = [m["step"] for m in metrics if m["split"] == "train"]
  val = [m for m in metrics if m["split"] == "val"]
  assert train_steps == [2, 4, 6] and [m["step"] for m in val] == [3, 6]
  assert {"loss", "lr", "grad_norm", "accuracy"} <= metrics[0].keys()
  assert "tokens_per_s" in metrics[2]
  assert result["loss"] == val[-1]["loss"] < np.log(65)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
  assert json.loads((tmp_path / "config.json").read_text())["model"]["vocab_size"] == 65
  assert (tmp_path / "tb").is_dir() and (tmp_path / "tokenizer.json").is_file()


def test_restore_gives_identical_params_and_next_losses(tmp_path):
  trainer.train(tiny_config(), tmp_path)
  logged = {m["step"]: m["loss"] for m in read_metrics(tmp_path) if m["split"] == "train"}

  run = trainer.setup(tiny_config(), tmp_path)  # restores step 6 (the latest)
  final = jax.device_get(run.state.params)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        run.state)
  state = run.checkpoints.restore(3, target, run.data)  # rewinds the data iterator too
  state, losses = train_steps(run, state, 3)  # steps 4, 5, 6
  run.checkpoints.close()
  assert losses[0] == logged[4] and losses[2] == logged[6]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), final)


class DispatchLog:
  """Records which step outputs were dispatched and which the host has waited for (through
  `jax.block_until_ready` or `jax.device_get`), to check how far the host runs ahead."""

  def __init__(self, monkeypatch):
    self.dispatched, self.waited = [], set()
    for name in ("block_until_ready", "device_get"):
      real = getattr(jax, name)
      monkeypatch.setattr(jax, name, self._recording(real))

  def _recording(self, real):
    def wait(x):
      self.waited.add(id(x))
      return real(x)
    return wait

  def dispatch(self, outputs):
    # Every output but the newest (just dispatched) and the one before it has been waited for.
    assert all(id(o) in self.waited for o in self.dispatched[:-1])
    self.dispatched.append(outputs)
    return outputs


def test_train_loop_runs_at_most_one_step_ahead(tmp_path, monkeypatch):
  # More than 32 programs queued on a device deadlock XLA:CPU's multi-device client (trainer.py).
  log, real_setup = DispatchLog(monkeypatch), trainer.setup

  def setup(*args, **kwargs):
    run = real_setup(*args, **kwargs)

    def train_step(state, batch):
      state, metrics = run.train_step(state, batch)
      return state, log.dispatch(metrics)

    return dataclasses.replace(run, train_step=train_step)

  monkeypatch.setattr(trainer, "setup", setup)
  trainer.train(tiny_config(), tmp_path)
  assert len(log.dispatched) == 6


def test_eval_fetches_each_batch_once_the_next_is_dispatched(monkeypatch):
  log = DispatchLog(monkeypatch)
  stats = lambda i: {"loss_sum": np.float32(i), "correct": np.int32(1), "count": np.int32(2),
                     "slot_reads": {"t": np.arange(3) * i}}
  out = trainer.mean_token_stats(lambda params, batch: log.dispatch(stats(batch)), None, range(5))
  assert len(log.dispatched) == 5
  assert (out["loss"], out["accuracy"]) == (1.0, 0.5)  # (0 + 1 + 2 + 3 + 4) / 10, 5 / 10
  assert any(k.startswith("memory/t/") for k in out)


def test_memory_values_get_their_own_learning_rate():
  from flax import nnx
  from memzoo.train import state as state_lib
  from memzoo.train.optimizer import make_optimizer
  config = tiny_config(memory_layers=(1,))
  config.model.vocab_size = 65
  config.model.pkm.update(n_keys=4, topk=2, heads=1, k_dim=8)
  config.train.update(memory_values_lr_mult=0.0, warmup_steps=0)
  _, abstract = state_lib.abstract_model(config.model, 0)
  params = jax.tree.map(lambda x: jax.numpy.ones(x.shape, x.dtype),
                        nnx.to_pure_dict(abstract))
  tx = make_optimizer(config.train, abstract)
  grads = jax.tree.map(jax.numpy.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  pkm = updates["stack"]["blocks"][1]["ffn"]
  assert float(jax.numpy.abs(pkm["values"]).max()) == 0.0  # lr multiplier 0: frozen
  assert float(jax.numpy.abs(updates["embed"]).max()) > 0.0


@pytest.mark.parametrize("knobs", [dict(scan_layers=True, remat="full"),
                                   dict(mixers=("mom",), remat="full")], ids=["scan", "mom-remat"])
def test_eval_step_runs_under_scan_and_remat(knobs):
  # nnx.capture (the memory-usage statistics) cannot trace through nnx.scan, nor through
  # nnx.remat of a module holding an nnx.List: evals of models without tables skip it.
  config = tiny_config(**knobs)
  config.model.vocab_size = 65
  graphdef, params = nnx.split(state_lib.build_model(config.model, 0), nnx.Param)
  eval_step = jax.jit(make_eval_step(graphdef, collect_reads=has_memory_tables(config.model)))
  tokens = jax.numpy.ones((2, 16), jax.numpy.int32)
  sums = eval_step(params, {"inputs": tokens, "targets": tokens})
  assert sums["slot_reads"] == {} and np.isfinite(float(sums["loss_sum"]))


@pytest.mark.parametrize("knobs", [{}, dict(remat="full")], ids=["plain", "remat"])
def test_evals_log_memory_usage_per_table(tmp_path, knobs):
  config = tiny_config(memory_layers=(0, 1), engram_layers=(0,), **knobs)
  config.model.pkm.update(n_keys=4, topk=2, heads=1, k_dim=8)
  config.model.engram.update(ngram_heads=2, ngram_dim=8)
  trainer.train(config, tmp_path)
  val = [m for m in read_metrics(tmp_path) if m["split"] == "val"][-1]
  usage = {k: v for k, v in val.items() if k.startswith("memory/")}
  pkm = sorted(k for k in usage if k.endswith("/key_entropy"))
  assert len(pkm) == 2, usage  # one product-key table per memory layer; engram has no sub-keys
  assert len([k for k in usage if k.endswith("/fraction_read")]) == 3, usage
  assert all(0 < v <= 1 for v in usage.values()), usage
