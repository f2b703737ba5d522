"""memzoo-report on a fake sweep directory: the CSV and markdown tables, final metrics of resumed
and unfinished runs, the plotted series, the figures, and the measured state size."""

import csv
import json

import pytest
from helpers import tiny_config

from memzoo.errors import UserError
from memzoo.experiments import plots, report
from memzoo.experiments.state_size import state_size

PNG = b"\x89PNG"


def fake_run(root, name, mixer, d_model, lr, val_accuracy, *, steps=100, finished=True, extra=""):
  run = root / name
  run.mkdir(parents=True)
  config = {"seed": 0, "data": {"task": "mqar", "seq_len": 64},
            "model": {"mixers": [mixer], "d_model": d_model},
            "train": {"steps": steps, "lr": lr}}
  (run / "config.json").write_text(json.dumps(config))
  last = steps if finished else steps // 2
  lines = [{"step": s, "split": split, "loss": 5.0 - s / 100, "accuracy": val_accuracy * s / last}
           for s in range(steps // 2, last + 1, steps // 2) for split in ("train", "val")]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + extra)


@pytest.fixture
def sweep_dir(tmp_path):
  fake_run(tmp_path, "attention-32", "attention", 32, 1e-3, 0.9)
  fake_run(tmp_path, "attention-64", "attention", 64, 1e-3, 1.0)
  fake_run(tmp_path, "gla-32", "gla", 32, 1e-3, 0.4)
  fake_run(tmp_path, "gla-32-lr", "gla", 32, 1e-2, 0.6)
  # Resumed after a crash: step 100 logged twice (the later record wins), then a torn line.
  resumed = json.dumps({"step": 100, "split": "val", "loss": 0.5, "accuracy": 0.7})
  fake_run(tmp_path, "gla-64", "gla", 64, 1e-3, 0.1, extra=resumed + '\n{"step": 10')
  fake_run(tmp_path / "more", "attention-16", "attention", 16, 1e-3, 0.8, finished=False)
  return tmp_path


def read_csv(path):
  with open(path) as f:
    return {row["run"]: row for row in csv.DictReader(f)}


def test_tables_hold_config_and_final_metrics(sweep_dir, capsys):
  report.main([str(sweep_dir)])
  assert "6 runs; wrote results.csv, results.md, loss_curves.png" in capsys.readouterr().out
  rows = read_csv(sweep_dir / "results.csv")
  assert set(rows) == {"attention-32", "attention-64", "gla-32", "gla-32-lr", "gla-64",
                       "more/attention-16"}
  assert rows["attention-64"]["val/accuracy"] == "1.0"
  assert rows["attention-64"]["train/loss"] == "4.0" and rows["attention-64"]["step"] == "100"
  assert rows["gla-64"]["val/accuracy"] == "0.7" and rows["gla-64"]["done"] == "True"
  unfinished = rows["more/attention-16"]
  assert unfinished["done"] == "False" and unfinished["step"] == "50"
  assert unfinished["model.mixers"] == "attention" and unfinished["seed"] == "0"

  md = (sweep_dir / "results.md").read_text().splitlines()
  header = md[4]
  assert header.startswith("| run | model.d_model | model.mixers | train.lr | done | step |")
  assert "seed" not in header and "data.seq_len" not in header  # the same in every run
  assert "| gla-32-lr | 32 | gla | 0.01 | True | 100 |" in "\n".join(md)
  assert (sweep_dir / "loss_curves.png").read_bytes()[:4] == PNG


def test_metric_vs_hyperparameter_plot(sweep_dir):
  report.main([str(sweep_dir), "--x=model.d_model", "--y=val/accuracy", "--group=model.mixers",
               "--facet=data.seq_len"])
  assert (sweep_dir / "val-accuracy_vs_model.d_model.png").read_bytes()[:4] == PNG


def test_series_groups_facets_and_reduces(sweep_dir):
  rows, _ = report.collect(sweep_dir)
  panels, categories = plots.series(rows, "model.d_model", "val/accuracy", ["model.mixers"],
                                    ["data.seq_len"], "max")
  assert categories == [] and list(panels) == [(64,)]
  lines = panels[(64,)]
  assert list(lines) == [("attention",), ("gla",)]
  assert lines[("attention",)] == [(16, 0.8), (32, 0.9), (64, 1.0)]
  assert lines[("gla",)] == [(32, 0.6), (64, 0.7)]  # the best of the two learning rates at 32
  mean, _ = plots.series(rows, "model.d_model", "val/accuracy", ["model.mixers"], [], "mean")
  assert mean[()][("gla",)][0] == (32, pytest.approx(0.5))
  by_mixer, categories = plots.series(rows, "model.mixers", "val/accuracy", [], [], "min")
  assert categories == ["attention", "gla"] and by_mixer[()][()] == [(0, 0.8), (1, 0.4)]


def test_user_errors(sweep_dir, tmp_path_factory):
  with pytest.raises(UserError, match="no run has column"):
    report.main([str(sweep_dir), "--x=model.width", "--y=val/accuracy"])
  with pytest.raises(UserError, match="holds no run"):
    report.main([str(tmp_path_factory.mktemp("empty"))])
  with pytest.raises(UserError, match="no such directory"):
    report.main([str(sweep_dir / "nope")])
  with pytest.raises(SystemExit):
    report.main([str(sweep_dir), "--x=model.d_model"])


def test_state_size_measures_the_decode_state():
  # Attention keeps K and V for every position: 2 * T * kv_heads * head_dim floats per layer.
  config = tiny_config().model
  config.update(vocab_size=65, d_model=32, num_layers=2, num_heads=2)
  assert state_size(config, 64) == 2 * (2 * 64 * 32)  # Zoology's 2 * d_model * T per layer
  config.num_kv_heads = 1  # grouped KV heads halve the cache
  assert state_size(config, 64) == 2 * (2 * 64 * 16)
