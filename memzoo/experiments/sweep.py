"""`memzoo-sweep` (also `python -m memzoo.experiments.sweep`): a config's sweep, run or emitted.

  memzoo-sweep configs/mqar.py --workdir DIR [--parallel N] [--config.<field>=<value> ...]
  memzoo-sweep configs/mqar.py --workdir DIR --emit list     # one memzoo-train command per line
  memzoo-sweep configs/mqar.py --workdir DIR --emit slurm    # writes DIR/sweep.sbatch
  memzoo-sweep configs/mqar.py --workdir DIR --only 'd_model=32'   # the runs whose name matches

The config file's `get_sweep()` (see `memzoo.experiments.hyper`) lists override dicts; each becomes
the run `DIR/<name>`, named after its overrides (`mixers=attention,d_model=64`), trained by
`python -m memzoo.train --config=<file> --workdir=DIR/<name> --config.<key>=<value> ...`. Extra
`--config.*` flags apply to every run. A run is finished when the checkpoint of its last step
exists; finished runs are skipped, and a started run resumes from its latest checkpoint (the
trainer does that), so re-running the same command after an interruption completes the sweep.
"""

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

import memzoo
from memzoo.errors import UserError
from memzoo.experiments import cli, hyper
from memzoo.train import config as config_lib
from memzoo.train import huge_pages

TRAIN_MODULE = "memzoo.train"
SOURCE_ROOT = Path(memzoo.__file__).resolve().parents[1]  # put on PYTHONPATH for the runs


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its directory, its `memzoo-train` flags and its last step."""
  name: str
  workdir: Path
  flags: tuple[str, ...]
  steps: int

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, "-m", TRAIN_MODULE, *self.flags]


def flag_value(value) -> str:
  """`value` as `--config.<key>=` parses it back: tuples as Python literals, the rest as text."""
  if value is None:
    raise ValueError("a sweep cannot set a field to None (leave the field out instead)")
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def run_names(overrides: list[dict]) -> list[str]:
  """Readable, path-safe names: `key=value` pairs joined by commas, in each dict's order.

  A key is shortened to its last component ("model.d_model" -> "d_model") unless two keys of the
  sweep share that component. Tuples read as `a+b`.
  """
  keys = list(dict.fromkeys(k for o in overrides for k in o))
  last = [k.rsplit(".", 1)[-1] for k in keys]
  label = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
  names = []
  for override in overrides:
    name = ",".join(f"{label[k]}={hyper.value_label(v)}" for k, v in override.items()) or "base"
    names.append(re.sub(r"[^A-Za-z0-9._+=,-]", "_", name))
  return names


def parse_train_flags(train_flags) -> ml_collections.ConfigDict:
  """The config `memzoo-train` builds from these flags (`--config=<file>`, `--config.<k>=<v>`)."""
  argv = ["memzoo-train", *(f for f in train_flags if not f.startswith("--workdir="))]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                           lock_config=False, sys_argv=argv)
  with warnings.catch_warnings():  # ml_collections loads the file with a deprecated importlib API
    warnings.filterwarnings("ignore", r"the load_module\(\) method", DeprecationWarning)
    values(argv)
  return holder.value


def expand(config_file: str, workdir: str, extra_flags=()) -> list[Run]:
  """The runs of `config_file`'s `get_sweep()` under `workdir`, with `extra_flags` appended."""
  module = config_lib.load_module(config_file)
  if not callable(getattr(module, "get_sweep", None)):
    raise UserError(f"{config_file}: defines no get_sweep(); add one returning a list of "
                    "override dicts (see memzoo.experiments.hyper)")
  overrides = module.get_sweep()
  if not overrides or not all(isinstance(o, dict) for o in overrides):
    raise UserError(f"{config_file}: get_sweep() must return a non-empty list of dicts")
  names = run_names(overrides)
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise UserError(f"{config_file}: get_sweep() repeats runs {repeated}; make each dict distinct")
  config_path, root = Path(config_file).resolve(), Path(workdir).resolve()
  runs = []
  for name, override in zip(names, overrides):
    try:
      train_flags = (f"--config={config_path}", f"--workdir={root / name}",
                     *(f"--config.{k.removeprefix('config.')}={flag_value(v)}"
                       for k, v in override.items()), *extra_flags)
      config = parse_train_flags(train_flags)
    except Exception as e:  # an unknown field or a value of the wrong type
      raise UserError(f"{config_file}: run {name}: {cli.one_line(e)}") from None
    runs.append(Run(name, root / name, train_flags, int(config.train.steps)))
  return runs


def latest_checkpoint(workdir: Path) -> int | None:
  """The newest complete checkpoint step (orbax renames a step's directory once it is written)."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return None
  return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=None)


def status(run: Run) -> str:
  """"done" (its last step is checkpointed), "partial" (it will resume) or "new"."""
  latest = latest_checkpoint(run.workdir)
  if latest is None:
    return "new"
  return "done" if latest >= run.steps else "partial"


def run_local(runs: list[Run], parallel: int, python: str = sys.executable,
              poll_s: float = 0.2) -> list[Run]:
  """Trains `runs` in subprocesses, `parallel` at a time; returns the runs that failed.

  Each run's output is appended to `<run>/train.log`. Ctrl-C stops the running trainings (they
  resume from their latest checkpoint next time).
  """
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
  queue, active, failed, done = list(runs), {}, [], 0
  try:
    while queue or active:
      while queue and len(active) < parallel:
        run = queue.pop(0)
        run.workdir.mkdir(parents=True, exist_ok=True)
        with open(run.workdir / "train.log", "a") as log:
          proc = subprocess.Popen(run.command(python), stdout=log, stderr=subprocess.STDOUT,
                                  env=env)
        active[proc] = (run, time.perf_counter())
        print(f"[{done + len(active)}/{len(runs)}] started {run.name}", flush=True)
      time.sleep(poll_s)
      for proc in [p for p in active if p.poll() is not None]:
        run, start = active.pop(proc)
        done += 1
        seconds = time.perf_counter() - start
        if proc.returncode == 0:
          print(f"finished {run.name} in {seconds:.0f} s", flush=True)
        else:
          failed.append(run)
          print(f"FAILED {run.name} (exit {proc.returncode}); see {run.workdir / 'train.log'}",
                flush=True)
  finally:
    for proc in active:  # only on an interruption: stop the trainings this call started
      proc.terminate()
    for proc in active:
      proc.wait()
  return failed


def slurm_script(runs: list[Run], workdir: Path, job_name: str, python: str, parallel: int | None,
                 sbatch_lines=()) -> str:
  """An sbatch array script: array task i trains run i (resubmitting is safe)."""
  array = f"0-{len(runs) - 1}" + (f"%{parallel}" if parallel else "")
  header = [f"--job-name={job_name}", f"--array={array}", f"--output={workdir}/slurm-%A_%a.out",
            *sbatch_lines]
  commands = "\n".join(f"  {shlex.quote(shlex.join(r.command(python)))}" for r in runs)
  return "\n".join([
      "#!/bin/bash",
      *(f"#SBATCH {line}" for line in header),
      "# Written by memzoo-sweep: one array task per run. Resubmitting is safe: a run resumes from",
      "# its latest checkpoint.",
      "set -euo pipefail",
      f"export PYTHONPATH={shlex.quote(str(SOURCE_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
      f"RUNS=(\n{commands}\n)",
      'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"',
      ""])


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="memzoo-sweep", description="Expand a config's get_sweep() into runs and train them "
      "locally, or emit their commands. Extra --config.<field>=<value> flags apply to every run.")
  parser.add_argument("config", help="config file defining get_config() and get_sweep()")
  parser.add_argument("--workdir", help="sweep directory (default runs/<config name>)")
  parser.add_argument("--parallel", type=int,
                      help="runs trained at once (locally, default 1; slurm: the array's limit)")
  parser.add_argument("--emit", choices=("list", "slurm"),
                      help="print the commands (list) or write DIR/sweep.sbatch (slurm) instead")
  parser.add_argument("--only", metavar="REGEX", type=_regex,
                      help="keep only the runs whose name matches, e.g. 'd_model=32,seq_len=64'")
  parser.add_argument("--python", default=sys.executable, help="interpreter for the runs")
  parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                      help="extra #SBATCH option, e.g. --sbatch=--gres=gpu:1 (repeatable)")
  parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
  return parser


def _regex(text: str) -> re.Pattern:
  try:
    return re.compile(text)
  except re.error as e:
    raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({e})") from None


def main(argv=None) -> None:
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments {bad}; overrides take the form --config.<field>=<value>")
  if args.parallel is not None and args.parallel < 1:
    parser.error(f"--parallel must be >= 1, got {args.parallel}")
  workdir = Path(args.workdir or f"runs/{Path(args.config).stem}").resolve()

  runs = expand(args.config, workdir, extra)
  if args.only:
    runs = [run for run in runs if args.only.search(run.name)]
    if not runs:
      raise UserError(f"--only={args.only.pattern}: matches no run of {args.config}")
  states = {run.name: status(run) for run in runs}
  todo = [run for run in runs if states[run.name] != "done"]
  summary = (f"{len(runs)} runs in {workdir}: {len(runs) - len(todo)} finished, "
             f"{sum(s == 'partial' for s in states.values())} to resume, "
             f"{sum(s == 'new' for s in states.values())} new")
  print(summary, file=sys.stderr if args.emit else sys.stdout, flush=True)
  if args.emit == "list":
    for run in todo:
      print(shlex.join(run.command(args.python)))
  elif args.emit == "slurm":
    if todo:
      workdir.mkdir(parents=True, exist_ok=True)
      script = workdir / "sweep.sbatch"
      script.write_text(slurm_script(todo, workdir, Path(args.config).stem, args.python,
                                     args.parallel, args.sbatch))
      print(f"wrote {script} ({len(todo)} array tasks); submit it with: sbatch {script}")
  else:
    try:
      failed = run_local(todo, args.parallel or 1, args.python)
    except KeyboardInterrupt:
      raise UserError("interrupted; run the same command again to resume the sweep") from None
    if failed:
      raise UserError(f"{len(failed)} of {len(todo)} runs failed: "
                      f"{', '.join(r.name for r in failed)}")


def console_main() -> None:
  """The `memzoo-sweep` console script (its runs inherit its huge-page setting)."""
  huge_pages.exec_with_huge_pages()
  cli.run(main)


if __name__ == "__main__":
  console_main()
