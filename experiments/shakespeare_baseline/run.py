"""The default run (configs/shakespeare_char.py, nanoGPT's CPU settings) timed end to end.

  python experiments/shakespeare_baseline/run.py [--repeats 3]

Runs `python -m memzoo.train` in a fresh run directory (so compile time is included, as a user
would see it), reads metrics.jsonl, then scores the final checkpoint on 200 validation batches for
a lower-variance number than the run's own 20-batch evals. Writes results.md next to this file.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parents[1]
NANOGPT = {"val_loss": 1.886, "wall_s": 208.0}  # measured on this 2-core machine (issue 2)


def train_once(workdir: Path) -> dict:
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "memzoo.train", f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(proc.stderr)
  events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val = {e["step"]: e["loss"] for e in events if e["split"] == "val"}
  return {"wall_s": wall, "val": val}


def long_eval(workdir: Path, batches: int = 200) -> float:
  code = f"""
import jax
from memzoo.train import trainer
from memzoo.train.config import from_json
from memzoo.data import pipeline
from pathlib import Path
wd = Path({str(workdir)!r})
config = from_json((wd / "config.json").read_text())
run = trainer.setup(config, wd)
run.eval_set = pipeline.eval_dataset(run.task, "val", global_batch=config.train.batch_size,
                                     num_batches={batches}, seed=config.seed + 1)
with run.context():
  print(trainer.evaluate(run, run.state.params)["loss"])
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
  return float(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  runs = []
  for _ in range(args.repeats):
    workdir = Path(tempfile.mkdtemp()) / "run"
    result = train_once(workdir)
    result["val_200"] = long_eval(workdir)
    runs.append(result)
  walls = [r["wall_s"] for r in runs]
  final = [r["val"][2000] for r in runs]
  lines = [
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
      f"Python {platform.python_version()}. Command: `python {' '.join(sys.argv)}`.", "",
      "| run | wall time (s), incl. start-up and compile | val loss @2000 (20 batches) | "
      "val loss @2000 (200 batches) |", "|---|---|---|---|",
      *[f"| {i + 1} | {r['wall_s']:.1f} | {r['val'][2000]:.4f} | {r['val_200']:.4f} |"
        for i, r in enumerate(runs)],
      f"| median | {statistics.median(walls):.1f} | {statistics.median(final):.4f} | "
      f"{statistics.median(r['val_200'] for r in runs):.4f} |",
      f"| nanoGPT (issue 2, same machine) | {NANOGPT['wall_s']:.0f} | {NANOGPT['val_loss']} | |",
      "", f"Wall-time ratio memzoo / nanoGPT: {statistics.median(walls) / NANOGPT['wall_s']:.2f}.",
      "", "Validation curve of run 1 (20-batch evals): " +
      ", ".join(f"{s}: {v:.3f}" for s, v in sorted(runs[0]["val"].items()))]
  (HERE / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
