"""`memzoo-bench`: the quick mode end to end (in a subprocess), the report's verdicts, bad flags."""

import json

import jax.numpy as jnp
import pytest
from conftest import run_with_devices

from memzoo.bench import cli, report
from memzoo.bench.timing import time_call

QUICK = ["--quick", "--mixers", "linear_attention,attention", "--lengths", "64"]
# Unoptimised XLA compiles several times faster; the quick run checks the pipeline, not speed.
FAST_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}


def test_quick_run_writes_every_table_and_plot(tmp_path):
  argv = QUICK + ["--out", str(tmp_path)]
  run_with_devices(f"from memzoo.bench.cli import main; main({argv!r})", devices=1,
                   timeout=300, env=FAST_COMPILE)
  text = (tmp_path / "results.md").read_text()
  machine = text.splitlines()[2]
  assert machine.startswith("Machine: ") and " cores;" in machine and "jax 0." in machine
  assert "Peak of one device, float32:" in text
  for section, header in [("## Mixer fwd+bwd", "| mixer \\ T | 64 | flatness |"),
                          ("## Decode", "| mixer \\ context | 16 | 32 | compiles | flatness |"),
                          ("## Train step MFU", "| variant | dtype | B x T |")]:
    assert section in text and header in text, (section, text)
  assert "| default | float32 | 1 x 32 |" in text and "MFU of `default`: " in text
  results = json.loads((tmp_path / "results.json").read_text())
  for suite in ("mixers", "decode"):
    assert results[suite]["recurrent"] == ["linear_attention"]
  cells = results["mixers"]["us_per_token"]
  assert all(isinstance(v, float) and v > 0 for row in cells.values() for v in row.values())
  # The recurrent step compiles once for every context; attention's KV cache grows with it.
  assert results["decode"]["compiles"] == {"linear_attention": 1, "attention": 2}
  assert all((tmp_path / f).stat().st_size > 0
             for f in ("mixers_fwd_bwd.png", "decode_step.png", "train_mfu.png"))


def test_report_judges_the_targets(tmp_path):
  flat, steep = {1024: 2.0, 4096: 2.1, 16384: 2.2}, {1024: 1.0, 16384: 1.5}
  mixers = {"setup": "s", "lengths": [1024, 4096, 16384], "repeats": 3,
            "us_per_token": {"flat": flat, "steep": steep}, "gflops": {}, "recurrent": ["flat",
                                                                                      "steep"]}
  row = dict(variant="default", dtype="float32", batch=4, seq_len=1024, step_s=1.0,
             step_cpu_s=2.0, train_flops=4e9, flops_per_s=4e9, peak_flops_per_s=1e10,
             peak_source="measured", mfu=0.4)
  text = report.write(tmp_path, ["# t"], {"mixers": mixers, "train": [row]}).read_text()
  assert "| flat | 2.000 | 2.100 | 2.200 | 10.0% (meets <= 15%) |" in text
  assert "| steep | 1.000 |  | 1.500 | 50.0% (misses <= 15%) |" in text
  assert "MFU of `default`: 40.0% (misses >= 50%)." in text


@pytest.mark.parametrize("argv,name", [(["--mixers", "nosuch"], "--mixers"),
                                       (["--suites", "speed"], "--suites"),
                                       (["--variants", "fast"], "--variants")])
def test_bad_flags_name_the_flag(argv, name, capsys):
  with pytest.raises(SystemExit):
    cli.parse(argv)
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert name in error and "choose from" in error


def test_time_call_takes_more_calls_when_they_are_short():
  calls = []

  def fn():
    calls.append(1)
    return jnp.zeros(())

  assert time_call(fn, repeats=3, warmup=1).repeats == 3 and len(calls) == 4
  timing = time_call(fn, repeats=3, warmup=0, min_seconds=0.02)
  assert timing.repeats > 3 and timing.repeats == len(calls) - 4
