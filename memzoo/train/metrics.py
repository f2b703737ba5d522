"""Run logs: `metrics.jsonl` (one JSON object per event), tensorboard scalars, a progress bar."""

import json
import sys
import time
from pathlib import Path

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from tensorboardX import SummaryWriter


class MetricsLog:
  """Appends `{"step": s, "split": split, **values}` lines and mirrors them to tensorboard.

  Only the process that owns the log (process 0) writes; others hold a disabled log.
  """

  def __init__(self, workdir: Path, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self.file = open(Path(workdir) / "metrics.jsonl", "a", buffering=1)
      self.tb = SummaryWriter(str(Path(workdir) / "tb"))

  def write(self, step: int, split: str, **values) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    self.file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    for name, value in values.items():
      self.tb.add_scalar(f"{split}/{name}", value, step)

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      self.tb.close()


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
  """Tokens per second between two calls."""

  def __init__(self):
    self.last_time, self.last_step = time.perf_counter(), None

  def rate(self, step: int, tokens_per_step: int) -> dict:
    """`{"tokens_per_s": r}` since the previous call; empty on the first call (no interval yet)."""
    now = time.perf_counter()
    rate = {}
    if self.last_step is not None and step > self.last_step:
      rate["tokens_per_s"] = (step - self.last_step) * tokens_per_step / (now - self.last_time)
    self.last_time, self.last_step = now, step
    return rate
