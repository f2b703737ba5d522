"""Orbax checkpoints of the train state and the grain iterator, saved asynchronously.

Layout: `<workdir>/checkpoints/<step>/{state,data}`; orbax writes each step to a temporary
directory and renames it when complete, so a crash never leaves a half-written step behind.
"""

from pathlib import Path

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves / restores `{"state": TrainState, "data": grain iterator}` under `directory`."""

  def __init__(self, directory: Path, keep: int):
    self.manager = ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator) -> None:
    """Starts an async save; returns once the arrays are copied off the devices."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """The state at `step` laid out as `abstract_state` (shapes + shardings); also rewinds
    `data_iterator` in place when given."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
