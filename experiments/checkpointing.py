"""Orbax checkpoints of the whole training state, for exact resumption.

The state saved is the stacked per-worker tree (parameters, optimizer state,
model state such as BatchNorm statistics or the LSTM's hidden state). Data
order and random keys are functions of (seed, step), so restoring the state
of step s and continuing from step s reproduces an uninterrupted run.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores the training state under `<run dir>/checkpoints`."""

  def __init__(self, directory: pathlib.Path, *, max_to_keep: int):
    """Opens (and creates) the checkpoint directory.

    Args:
      directory: the checkpoint directory.
      max_to_keep: how many of the latest checkpoints are kept.
    """
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as the checkpoint of `step` (asynchronously)."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, step: int, like: Any) -> Any:
    """Restores the checkpoint of `step` with the structure and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
