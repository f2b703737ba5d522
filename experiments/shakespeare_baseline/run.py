"""The default run (configs/shakespeare_char.py, nanoGPT's CPU settings) timed end to end, side by
side with nanoGPT's run re-implemented in torch (nanogpt_peer.py).

  python experiments/shakespeare_baseline/run.py --repeats 3 \\
      --torch_python /work/peers-venv/bin/python

Each repeat runs `python -m memzoo.train` in a fresh run directory (so compile time is included,
as a user would see it), then the peer (when `--torch_python` names an interpreter with torch),
alternating so both see the same machine. The final memzoo checkpoint is scored on 200 validation
batches for a lower-variance number than the run's own 20-batch evals. Writes results.md next to
this file.
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

from memzoo.train import huge_pages
from memzoo.train.mfu import host_cpu

HERE = Path(__file__).parent
REPO = HERE.parents[1]
NANOGPT_ISSUE = {"val_loss": 1.886, "wall_s": 208.0}  # issue 2's measurement on its machine


def train_once(workdir: Path) -> dict:
  launch, t0 = time.time(), time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "memzoo.train", f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(proc.stderr)
  events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val = {e["step"]: e["loss"] for e in events if e["split"] == "val"}
  elapsed = {e["step"]: e["elapsed_s"] for e in events if e["split"] == "val"}
  since_launch = {e["step"]: e["time"] - launch for e in events if e["split"] == "val"}
  return {"wall_s": wall, "val": val, "elapsed_s": elapsed, "since_launch_s": since_launch}


def peer_once(torch_python: str) -> dict:
  t0 = time.perf_counter()
  proc = subprocess.run([torch_python, str(HERE / "nanogpt_peer.py")], capture_output=True,
                        text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(proc.stderr)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  return {"wall_s": wall, "val": {int(k): v for k, v in result["val"].items()},
          "torch": result["torch"]}


def time_to_loss(run: dict, target: float, *, upper_bound: bool = False) -> float | None:
  """Seconds from launch until the first eval at or below `target` was logged (its wall-clock
  stamp in metrics.jsonl). `upper_bound`: the earlier, conservative estimate, the eval's time
  since the first step plus everything of the wall time outside the steps (which also counts the
  final checkpoint and the exit, after the target)."""
  hits = [step for step, loss in sorted(run["val"].items()) if loss <= target]
  if not hits:
    return None
  if not upper_bound:
    return run["since_launch_s"][hits[0]]
  overhead = run["wall_s"] - run["elapsed_s"][max(run["elapsed_s"])]
  return run["elapsed_s"][hits[0]] + overhead


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
  huge_pages.exec_with_huge_pages()  # memzoo-train's setting, for the peer too
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--torch_python", help="interpreter with torch, for nanogpt_peer.py")
  args = parser.parse_args()
  runs, peers = [], []
  for _ in range(args.repeats):
    workdir = Path(tempfile.mkdtemp()) / "run"
    result = train_once(workdir)
    result["val_200"] = long_eval(workdir)
    runs.append(result)
    if args.torch_python:
      peers.append(peer_once(args.torch_python))
  wall = statistics.median(r["wall_s"] for r in runs)
  lines = [
      f"Machine: {host_cpu()} ({huge_pages.describe()}), Python {platform.python_version()}, "
      f"{time.strftime('%Y-%m-%d %H:%M')}. Command: `python {' '.join(sys.argv)}`.", "",
      "| run | wall time (s), incl. start-up and compile | val loss @2000 (20 batches) | "
      "val loss @2000 (200 batches) |", "|---|---|---|---|",
      *[f"| memzoo {i + 1} | {r['wall_s']:.1f} | {r['val'][2000]:.4f} | {r['val_200']:.4f} |"
        for i, r in enumerate(runs)],
      f"| memzoo median | {wall:.1f} | {statistics.median(r['val'][2000] for r in runs):.4f} | "
      f"{statistics.median(r['val_200'] for r in runs):.4f} |"]
  if peers:
    peer_wall = statistics.median(p["wall_s"] for p in peers)
    peer_loss = statistics.median(p["val"][2000] for p in peers)
    reach = [time_to_loss(r, peer_loss) for r in runs]
    bound = [time_to_loss(r, peer_loss, upper_bound=True) for r in runs]
    ratio = lambda times: (f" (median {statistics.median(times) / peer_wall:.2f}x the peer's wall"
                           " time)." if None not in times else ".")
    listed = lambda times: ", ".join("not reached" if t is None else f"{t:.1f} s" for t in times)
    lines += [
        *[f"| nanoGPT peer {i + 1} (torch {p['torch']}) | {p['wall_s']:.1f} | "
          f"{p['val'][2000]:.4f} | |" for i, p in enumerate(peers)],
        f"| nanoGPT peer median | {peer_wall:.1f} | {peer_loss:.4f} | |", "",
        f"Wall-time ratio memzoo / nanoGPT peer (2000 steps each): {wall / peer_wall:.2f}.",
        f"Time for memzoo to reach the peer's final val loss {peer_loss:.4f} (launch to the "
        f"eval's log line): {listed(reach)}{ratio(reach)}",
        f"The earlier upper bound (the eval's time since the first step plus all of the run's "
        f"time outside the steps, the final checkpoint and exit included): {listed(bound)}"
        f"{ratio(bound)}",
        "", "Validation curve of peer run 1 (20-batch evals): " +
        ", ".join(f"{s}: {v:.3f}" for s, v in sorted(peers[0]["val"].items()))]
  else:
    lines += [f"| nanoGPT (issue 2, its machine) | {NANOGPT_ISSUE['wall_s']:.0f} | "
              f"{NANOGPT_ISSUE['val_loss']} | |", ""]
  lines += ["", "Validation curve of memzoo run 1 (20-batch evals): " +
            ", ".join(f"{s}: {v:.3f}" for s, v in sorted(runs[0]["val"].items()))]
  (HERE / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
