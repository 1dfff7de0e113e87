"""Orbax checkpoints of the whole training state, for exact resumption.

The state saved is the stacked per-worker tree (parameters, optimizer state,
model state such as BatchNorm statistics or the LSTM's hidden state). Data
order and random keys are functions of (seed, step), so restoring the state
of step s and continuing from step s reproduces an uninterrupted run.

A crash can hit a save at any moment. Orbax writes each step into a temporary
directory and renames it when complete, so a save cut short never looks like
a checkpoint. Against a checkpoint damaged after that (a truncated or altered
file), each completed save gets a sha256 digest of its files
(`<step>/sha256sums.json`); `restore_latest` checks it, reports a damaged
checkpoint, moves it to `<checkpoints>.corrupt/` and falls back to the
previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

DIGEST_FILE = "sha256sums.json"


class WorkerCountError(ValueError):
  """A checkpoint of another number of workers, with no way to resize it."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's files do not match their digest, or it cannot be read."""


def _file_digests(step_dir: pathlib.Path) -> dict[str, str]:
  digests = {}
  for path in sorted(step_dir.rglob("*")):
    if path.is_file() and path.name != DIGEST_FILE:
      # Streamed: a checkpoint file can be far larger than worth holding.
      with open(path, "rb") as f:
        digests[str(path.relative_to(step_dir))] = hashlib.file_digest(
            f, "sha256").hexdigest()
  return digests


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` so that a crash leaves the old or the new file."""
  path = pathlib.Path(path)
  temporary = path.with_name(f".{path.name}.tmp")
  with open(temporary, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


class Checkpointer:
  """Saves and restores the training state under `<run dir>/checkpoints`."""

  def __init__(self, directory: pathlib.Path, *, max_to_keep: int):
    """Opens (and creates) the checkpoint directory.

    Args:
      directory: the checkpoint directory.
      max_to_keep: how many of the latest checkpoints are kept; at least 2,
        so that a damaged newest checkpoint has a predecessor.

    Raises:
      ValueError: `max_to_keep` is below 2.
    """
    if max_to_keep < 2:
      raise ValueError(
          f"keep_checkpoints={max_to_keep}: keep at least 2 checkpoints, so "
          "that a damaged newest one can fall back to the previous one.")
    self.directory = pathlib.Path(directory).absolute()
    self.quarantine = self.directory.with_name(self.directory.name + ".corrupt")
    self._is_main_process = jax.process_index() == 0
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True),
        # Named, so that a new manager can read a checkpoint's metadata.
        item_handlers=ocp.StandardCheckpointHandler())
    self._undigested: list[int] = []

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as the checkpoint of `step` (asynchronously).

    The previous save is finished and digested first, so at most one save is
    in flight and every older checkpoint carries its digest.
    """
    self._finish_saves()
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._undigested.append(step)

  def _finish_saves(self) -> None:
    self._manager.wait_until_finished()
    for step in self._undigested:
      step_dir = self.directory / str(step)
      if self._is_main_process and step_dir.is_dir():
        write_atomically(step_dir / DIGEST_FILE,
                         json.dumps(_file_digests(step_dir), indent=0))
    self._undigested = []

  def verify(self, step: int) -> None:
    """Checks the files of checkpoint `step` against its digest.

    A checkpoint without a digest (the process died between the end of the
    save and the digest) passes; reading it is the remaining check.

    Raises:
      CorruptCheckpointError: a file is missing, extra, or altered.
    """
    step_dir = self.directory / str(step)
    digest_path = step_dir / DIGEST_FILE
    if not digest_path.exists():
      return
    try:
      expected = json.loads(digest_path.read_text())
    except json.JSONDecodeError as error:
      raise CorruptCheckpointError(
          f"Checkpoint {step_dir}: unreadable digest {digest_path} "
          f"({error}).") from error
    actual = _file_digests(step_dir)
    if actual != expected:
      changed = sorted(name for name in expected.keys() | actual.keys()
                       if expected.get(name) != actual.get(name))
      raise CorruptCheckpointError(
          f"Checkpoint {step_dir}: {len(changed)} file(s) missing or differing "
          f"from their sha256 digest: {', '.join(changed[:5])}.")

  def restore(self, step: int, like: Any) -> Any:
    """Restores the checkpoint of `step` with the structure and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def saved_num_workers(self, step: int) -> int | None:
    """K of the checkpoint of `step`: the leading axis of its stacked leaves."""
    metadata = self._manager.item_metadata(step)
    shapes = [leaf.shape for leaf in jax.tree.leaves(
        metadata, is_leaf=lambda x: hasattr(x, "shape")) if getattr(leaf, "shape", ())]
    return shapes[0][0] if shapes else None

  def _restore_resized(self, step: int, like: Any, saved: int,
                       resize: Callable[[Any], Any]) -> Any:
    """The checkpoint of `saved` workers, read as saved, then `resize`d."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((saved,) + tuple(x.shape[1:]), x.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(
                                           jax.devices()[0])), like)
    return resize(self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract)))

  def restore_latest(self, like: Any,
                     resize: Callable[[Any], Any] | None = None
                     ) -> tuple[int, Any, list[str]]:
    """Restores the newest intact checkpoint.

    Each damaged checkpoint met on the way (digest mismatch, or orbax cannot
    read it) is reported on stderr and moved to `<checkpoints>.corrupt/`.

    Args:
      like: a state with the structure and shardings to restore into; its
        leaves are stacked per worker (leading axis K).
      resize: for a checkpoint of another number of workers K: the saved
        state (stacked over K) -> a state like `like` (elastic restore,
        `extrap_optax.resize_workers`). None: such a checkpoint is an error.

    Returns:
      `(step, state, problems)`: the step restored (0 and `like` when there is
      no intact checkpoint) and one message per damaged checkpoint.

    Raises:
      WorkerCountError: the checkpoint has another K and `resize` is None.
    """
    problems = []
    wanted = next((x.shape[0] for x in jax.tree.leaves(like)
                   if getattr(x, "shape", ())), None)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        self.verify(step)
        try:
          saved = self.saved_num_workers(step)
        except Exception as error:  # orbax/tensorstore raise many types.
          raise CorruptCheckpointError(
              f"Checkpoint {self.directory / str(step)} cannot be read: "
              f"{type(error).__name__}: {error}") from error
        if saved != wanted and resize is None:
          raise WorkerCountError(
              f"Checkpoint {self.directory / str(step)} holds {saved} "
              f"workers, this run has workers.num_workers={wanted}. Run with "
              f"workers.num_workers={saved} to resume it as it was, or let "
              "the trainer resize it (it does: `train_and_evaluate`).")
        try:
          state = (self.restore(step, like) if saved == wanted else
                   self._restore_resized(step, like, saved, resize))
        except Exception as error:  # orbax/tensorstore raise many types.
          raise CorruptCheckpointError(
              f"Checkpoint {self.directory / str(step)} cannot be read: "
              f"{type(error).__name__}: {error}") from error
      except CorruptCheckpointError as error:
        moved = self._quarantine(step)
        message = f"{error} Moved to {moved}; trying the previous checkpoint."
        print(f"warning: {message}", file=sys.stderr)
        problems.append(message)
        continue
      return step, state, problems
    return 0, like, problems

  def _quarantine(self, step: int) -> pathlib.Path:
    target = self.quarantine / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
    if self._is_main_process:
      self.quarantine.mkdir(exist_ok=True)
      os.replace(self.directory / str(step), target)
    self._manager.reload()
    return target

  def close(self) -> None:
    """Waits for pending saves, digests them and releases the manager."""
    self._finish_saves()
    self._manager.close()
