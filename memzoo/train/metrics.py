"""Run logs: `metrics.jsonl` (one JSON object per event), tensorboard scalars, a progress bar."""

import json
import logging
import sys
import time
from pathlib import Path

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from tensorboardX import SummaryWriter

from memzoo.train import rundir

# A skipped step logs its non-finite loss on purpose; tensorboardX would warn about each one.
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


class MetricsLog:
  """Appends `{"step": s, "split": split, "time": t, **values}` lines (t: unix seconds of the
  write, as tensorboard's wall_time) and mirrors the values to tensorboard.

  A run resumed from step `start` first drops the lines after `start` (written before a crash,
  about to be recomputed) and any torn last line, and tells tensorboard to purge its events after
  `start`; so the log never holds a step twice. Only the process that owns the log (process 0)
  writes; others hold a disabled log.
  """

  def __init__(self, workdir: Path, enabled: bool = True, start: int = 0):
    self.enabled = enabled
    if enabled:
      path = Path(workdir) / "metrics.jsonl"
      if path.is_file():
        rundir.write_atomic(path, "".join(_lines_up_to(path, start)))
      self.file = open(path, "a", buffering=1)
      self.tb = SummaryWriter(str(Path(workdir) / "tb"), purge_step=start + 1)

  def write(self, step: int, split: str, **values) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    record = {"step": int(step), "split": split, "time": round(time.time(), 3), **values}
    self.file.write(json.dumps(record) + "\n")
    for name, value in values.items():
      self.tb.add_scalar(f"{split}/{name}", value, step)

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      self.tb.close()


def _lines_up_to(path: Path, step: int):
  for line in path.read_text().splitlines(keepends=True):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if line.endswith("\n") and record.get("step", step + 1) <= step:
      yield line


class ProgressBar:
  """A rich progress bar (loss, tokens/s, ETA) on a terminal; silent otherwise (the per-eval summary
  lines carry the progress in logs)."""

  def __init__(self, total: int, start: int, enabled: bool = True):
    self.enabled = enabled and sys.stdout.isatty()
    if self.enabled:
      self.progress = Progress(
          TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
          TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
          TimeRemainingColumn())
      self.task = self.progress.add_task("train", total=total, completed=start, status="")
      self.progress.start()

  def update(self, step: int, status: str = "") -> None:
    if self.enabled:
      self.progress.update(self.task, completed=step, status=status)

  def print(self, line: str) -> None:
    if self.enabled:
      self.progress.console.print(line, highlight=False)
    else:
      print(line, flush=True)

  def close(self) -> None:
    if self.enabled:
      self.progress.stop()


class Throughput:
  """Tokens, model FLOPs per second and MFU (memzoo/train/mfu.py) between two calls."""

  def __init__(self, tokens_per_step: int, flops_per_step: float, peak_flops_per_s: float):
    self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
    self.peak = peak_flops_per_s
    self.last_time, self.last_step = time.perf_counter(), None

  def rate(self, step: int) -> dict:
    """`{"tokens_per_s", "model_flops_per_s", "mfu"}` since the previous call; empty on the first
    call (no interval yet)."""
    now = time.perf_counter()
    rate = {}
    if self.last_step is not None and step > self.last_step:
      steps_per_s = (step - self.last_step) / (now - self.last_time)
      rate = {"tokens_per_s": steps_per_s * self.tokens_per_step,
              "model_flops_per_s": steps_per_s * self.flops_per_step,
              "mfu": steps_per_s * self.flops_per_step / self.peak}
    self.last_time, self.last_step = now, step
    return rate

  @staticmethod
  def summary(rate: dict) -> str:
    """`"12,345 tok/s  MFU 41.2%"` (empty before the first interval)."""
    if not rate:
      return ""
    return f"{rate['tokens_per_s']:,.0f} tok/s  MFU {100 * rate['mfu']:.1f}%"
