"""Graceful stops: SIGTERM (a preemption notice) or SIGINT (Ctrl-C) ask the loop to checkpoint and
exit cleanly at the end of the current step.

One process: our own handlers record the request (orbax's `reached_preemption` needs the JAX
distributed service). Several processes: no handlers; JAX's preemption notifier (installed by
`jax.distributed.initialize`) owns SIGTERM, and `reached_preemption(step)` makes every process
stop at the same step, so no process waits forever in a collective the others have left.
A second signal of the same kind is not intercepted: it interrupts at once (the last complete
checkpoint still stands).
"""

import signal
import sys
import threading

import jax
import orbax.checkpoint as ocp

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
  """Context manager: while active, `stop_requested(step)` says whether to checkpoint and stop."""

  def __init__(self):
    self.received = None  # the name of the first signal received
    self.previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self.previous[sig] = signal.signal(sig, self._handle) or signal.SIG_DFL
    return self

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    signal.signal(signum, self.previous[signum])  # a second signal interrupts at once
    print(f"memzoo: {self.received} received: finishing this step, then saving a checkpoint "
          "(send it again to stop at once)", file=sys.stderr, flush=True)

  def stop_requested(self, step: int) -> bool:
    if self.received is None and jax.process_count() > 1 and ocp.multihost.reached_preemption(step):
      self.received = "SIGTERM"
    return self.received is not None
