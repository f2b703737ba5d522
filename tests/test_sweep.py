"""memzoo-sweep: expansion into named runs, skipping finished runs, resuming partial ones, failures,
the emitted command list and sbatch script, and one real sweep of two tiny trainings."""

import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

from memzoo.data import tasks
from memzoo.errors import UserError
from memzoo.experiments import hyper, report, sweep
from memzoo.train import config as config_lib
from memzoo.train import validate

TINY = textwrap.dedent("""
    import ml_collections
    from memzoo.experiments import hyper
    from memzoo.train.config import base_config

    def get_config():
      config = base_config()
      config.data = ml_collections.ConfigDict(dict(
          task="mqar", vocab_size=64, seq_len=16, num_kv_pairs=2, num_train_examples=64,
          num_val_examples=8))
      config.model.update(d_model=16, num_layers=1, num_heads=2, ffn="identity")
      config.train.update(steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_every=2,
                          eval_steps=2, checkpoint_every=2)
      return config

    def get_sweep():
      return hyper.product(hyper.sweep("model.mixers", [("attention",)]),
                           hyper.sweep("model.d_model", {d_models}))
""")

# Stands in for `python -m memzoo.train`: logs its argv, then "trains" to the step given by
# --config.train.steps (a checkpoint directory, as orbax leaves one); fails for d_model=48.
FAKE_TRAINER = textwrap.dedent(f"""\
    #!{sys.executable}
    import pathlib, sys
    flags = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    workdir = pathlib.Path(flags["--workdir"])
    with open(workdir / "calls.log", "a") as f:
      f.write(" ".join(sys.argv[1:]) + "\\n")
    if flags.get("--config.model.d_model") == "48":
      sys.exit(3)
    (workdir / "checkpoints" / flags["--config.train.steps"]).mkdir(parents=True, exist_ok=True)
""")


def write_config(tmp_path, d_models=(16, 32)):
  path = tmp_path / "tiny.py"
  path.write_text(TINY.format(d_models=list(d_models)))
  return path


def fake_trainer(tmp_path):
  path = tmp_path / "fake_python"
  path.write_text(FAKE_TRAINER)
  path.chmod(0o755)
  return str(path)


def calls(run_dir):
  log = run_dir / "calls.log"
  return log.read_text().splitlines() if log.is_file() else []


def test_hyper_product_zipit_and_errors():
  grid = hyper.product(hyper.sweep("a", [1, 2]),
                       hyper.zipit(hyper.sweep("b", [3, 4]), hyper.sweep("c", ["x", "y"])))
  assert grid == [{"a": 1, "b": 3, "c": "x"}, {"a": 1, "b": 4, "c": "y"},
                  {"a": 2, "b": 3, "c": "x"}, {"a": 2, "b": 4, "c": "y"}]
  with pytest.raises(ValueError, match="one length"):
    hyper.zipit(hyper.sweep("b", [1, 2]), hyper.sweep("c", [1]))
  with pytest.raises(ValueError, match="'a'"):
    hyper.product(hyper.sweep("a", [1]), hyper.sweep("a", [2]))


def test_available_mixers_keeps_registered_ones_and_says_so(capsys):
  assert hyper.available_mixers(("attention", "no_such_mixer")) == ("attention",)
  assert "no_such_mixer" in capsys.readouterr().err


def test_run_names_are_readable_and_path_safe():
  names = sweep.run_names([
      {"model.mixers": ("gla", "attention"), "model.d_model": 64, "train.lr": 0.001},
      {"model.attention.window": 8, "model.gla.window": 4}, {}])
  assert names == ["mixers=gla+attention,d_model=64,lr=0.001",
                   "model.attention.window=8,model.gla.window=4", "base"]


def test_expand_builds_the_train_commands(tmp_path):
  runs = sweep.expand(str(write_config(tmp_path)), tmp_path / "sweep",
                      ["--config.train.steps=6"])
  assert [r.name for r in runs] == ["mixers=attention,d_model=16", "mixers=attention,d_model=32"]
  run = runs[1]
  assert run.workdir == (tmp_path / "sweep" / run.name).resolve() and run.steps == 6
  assert run.command("py") == [
      "py", "-m", "memzoo.train", f"--config={(tmp_path / 'tiny.py').resolve()}",
      f"--workdir={run.workdir}", "--config.model.mixers=('attention',)",
      "--config.model.d_model=32", "--config.train.steps=6"]
  config = sweep.parse_train_flags(run.flags)  # what memzoo-train will build from them
  assert config.model.mixers == ("attention",) and config.model.d_model == 32


@pytest.mark.parametrize("sweep_body, message", [
    ("", "defines no get_sweep"),
    ("def get_sweep():\n  return []", "non-empty list"),
    ("def get_sweep():\n  return [{'model.d_model': 8}, {'model.d_model': 8}]", "repeats runs"),
    ("def get_sweep():\n  return [{'model.d_modle': 8}]", "run d_modle=8"),
    ("def get_sweep():\n  return [{'model.d_model': 'wide'}]", "run d_model=wide"),
])
def test_bad_sweeps_are_one_line_user_errors(tmp_path, sweep_body, message):
  config = tmp_path / "bad.py"
  config.write_text("from memzoo.train.config import base_config\n"
                    "def get_config():\n  return base_config()\n" + sweep_body + "\n")
  with pytest.raises(UserError, match=message):
    sweep.expand(str(config), tmp_path / "sweep")


def test_status_follows_the_checkpoints(tmp_path):
  run = sweep.Run("r", tmp_path / "r", (), steps=6)
  assert sweep.status(run) == "new"
  (run.workdir / "checkpoints" / "3").mkdir(parents=True)
  (run.workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1").mkdir()  # a save cut short
  assert sweep.status(run) == "partial"
  (run.workdir / "checkpoints" / "6").mkdir()
  assert sweep.status(run) == "done"


def test_local_sweep_skips_finished_runs_and_resumes_partial_ones(tmp_path, capsys):
  config, python = str(write_config(tmp_path, (16, 32, 64))), fake_trainer(tmp_path)
  args = [config, f"--workdir={tmp_path / 'sweep'}", "--parallel=2", f"--python={python}",
          "--config.train.steps=6"]
  sweep.main(args)
  dirs = {d: tmp_path / "sweep" / f"mixers=attention,d_model={d}" for d in (16, 32, 64)}
  assert all(len(calls(p)) == 1 for p in dirs.values())
  assert "3 new" in capsys.readouterr().out

  # Interrupt d_model=32 after its step-3 checkpoint: only it runs again, with the same command.
  (dirs[32] / "checkpoints" / "6").rmdir()
  (dirs[32] / "checkpoints" / "3").mkdir()
  sweep.main(args)
  assert "2 finished, 1 to resume, 0 new" in capsys.readouterr().out
  assert [len(calls(p)) for p in dirs.values()] == [1, 2, 1]
  assert calls(dirs[32])[0] == calls(dirs[32])[1]

  sweep.main(args)  # all finished: nothing runs
  assert [len(calls(p)) for p in dirs.values()] == [1, 2, 1]


def test_failed_runs_are_reported(tmp_path, capsys):
  config, python = str(write_config(tmp_path, (16, 48))), fake_trainer(tmp_path)
  with pytest.raises(UserError, match=r"1 of 2 runs failed: mixers=attention,d_model=48"):
    sweep.main([config, f"--workdir={tmp_path / 's'}", f"--python={python}",
                "--config.train.steps=6"])
  assert "FAILED mixers=attention,d_model=48 (exit 3)" in capsys.readouterr().out


def test_emit_list_and_slurm(tmp_path, capsys):
  config, workdir = str(write_config(tmp_path)), tmp_path / "sweep"
  (workdir / "mixers=attention,d_model=16" / "checkpoints" / "4").mkdir(parents=True)  # finished
  sweep.main([config, f"--workdir={workdir}", "--emit=list", "--python=python3"])
  out = capsys.readouterr()
  lines = out.out.splitlines()
  assert len(lines) == 1 and "1 finished" in out.err
  assert shlex.split(lines[0])[:3] == ["python3", "-m", "memzoo.train"]
  assert "--config.model.d_model=32" in shlex.split(lines[0])

  (workdir / "mixers=attention,d_model=16" / "checkpoints" / "4").rmdir()
  printer = tmp_path / "print_argv"
  printer.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  printer.chmod(0o755)
  sweep.main([config, f"--workdir={workdir}", "--emit=slurm", f"--python={printer}",
              "--parallel=3", "--sbatch=--gres=gpu:1"])
  script = (workdir / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-1%3" in script and "#SBATCH --gres=gpu:1" in script
  task = subprocess.run(["bash", str(workdir / "sweep.sbatch")], capture_output=True, text=True,
                        env=dict(os.environ, SLURM_ARRAY_TASK_ID="1"))
  assert task.returncode == 0, task.stderr
  assert json.loads(task.stdout) == list(sweep.expand(config, workdir)[1].command()[1:])


def test_only_selects_runs_and_refuses_a_bad_pattern(tmp_path, capsys):
  config, workdir = str(write_config(tmp_path)), tmp_path / "sweep"
  sweep.main([config, f"--workdir={workdir}", "--emit=list", "--only=d_model=32"])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1 and "--config.model.d_model=32" in lines[0]
  with pytest.raises(UserError, match="matches no run"):
    sweep.main([config, f"--workdir={workdir}", "--emit=list", "--only=d_model=99"])
  with pytest.raises(SystemExit):
    sweep.main([config, f"--workdir={workdir}", "--emit=list", "--only=("])
  assert "'(' is not a regular expression" in capsys.readouterr().err


def test_real_sweep_then_report(tmp_path):
  """One tiny training through the command line, then the report on its directory."""
  config, workdir = str(write_config(tmp_path, (16,))), tmp_path / "sweep"
  result = subprocess.run([sys.executable, "-m", "memzoo.experiments.sweep", config,
                           f"--workdir={workdir}"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "finished mixers=attention,d_model=16" in result.stdout
  assert sweep.status(sweep.expand(config, workdir)[0]) == "done"

  report.main([str(workdir), "--x=model.d_model", "--y=val/accuracy", "--state_size"])
  row = (workdir / "results.md").read_text().splitlines()[-1]
  # attention's state is its KV cache: 2 * d_model * seq_len floats per layer (Zoology's formula)
  assert row.startswith("| mixers=attention,d_model=16 | True | 4 | 512 |"), row
  assert (workdir / "val-accuracy_vs_model.d_model.png").stat().st_size > 1000


@pytest.mark.parametrize("config_file, per_mixer", [("configs/mqar.py", 9), ("configs/niah.py", 3)])
def test_shipped_sweeps_expand_and_build_their_tasks(tmp_path, config_file, per_mixer):
  runs = sweep.expand(str(REPO_ROOT / config_file), tmp_path)
  assert len(runs) >= per_mixer and len(runs) % per_mixer == 0
  config = sweep.parse_train_flags(runs[per_mixer - 1].flags).copy_and_resolve_references()
  task = tasks.build_task(config_lib.data_options(config))
  assert task.seq_len == config.data.seq_len == 256 + 256 * (per_mixer == 3)
  first = sweep.parse_train_flags(runs[0].flags).copy_and_resolve_references()
  assert first.data.seq_len < config.data.seq_len  # tokens per batch stay fixed across lengths
  tokens = lambda c: c.train.batch_size * c.data.seq_len
  assert tokens(first) == tokens(config)


@pytest.mark.parametrize("config_file",
                         sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py")))
def test_shipped_configs_and_every_run_of_their_sweeps_validate(tmp_path, config_file):
  """Each file in configs/ gives a valid config, and so does each run its get_sweep() expands to:
  a field renamed in the code fails here, not hours into a sweep."""
  path = str(REPO_ROOT / "configs" / config_file)
  module = config_lib.load_module(path)
  configs = [module.get_config()]
  if hasattr(module, "get_sweep"):
    configs += [sweep.parse_train_flags(run.flags) for run in sweep.expand(path, tmp_path)]
  for config in configs:
    validate.check_config(config.copy_and_resolve_references())
