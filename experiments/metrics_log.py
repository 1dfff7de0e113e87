"""A run's one metrics log: `metrics.jsonl` and its TensorBoard copy `tb/`.

Records are appended to `metrics.jsonl` line by line, so a crash loses at
most the line being written (`read_metrics` drops a cut last line), and each
is also written to `tb/` as TensorBoard scalars (tensorboardX). On resume the
log is cut back to the restored step: the steps after it will be redone.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from typing import Any, Callable, Sequence

import tensorboardX

from experiments import checkpointing

Record = dict[str, Any]


def read_metrics(run_dir: str | pathlib.Path) -> list[Record]:
  """The records of `metrics.jsonl`, without a last line cut by a crash.

  Raises:
    ValueError: a line other than the last is not valid JSON.
  """
  path = pathlib.Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  lines = path.read_text().split("\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line:
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines):  # No newline yet: the write was cut short.
        break
      raise ValueError(f"{path}, line {number}, is not valid JSON ({error}); "
                       "only a last line cut by a crash is expected.") from error
  return records


def step_records(steps: Sequence[int], metrics: Sequence[dict[str, Any]],
                 steps_per_epoch: int, learning_rate: Callable[[int], Any]
                 ) -> tuple[list[Record], str]:
  """The training steps' records up to a non-finite loss, and its message.

  Args:
    steps: the steps (from 1).
    metrics: each step's metrics (host scalars), with `online_train_loss`.
    steps_per_epoch: for the records' "epoch".
    learning_rate: the schedule; step s was taken at rate γ_{s-1}.

  Returns:
    `(records, message)`: the records of the steps before the first
    non-finite training loss (all of them if none), and a message naming
    that step, or "".
  """
  records = []
  for step, values in zip(steps, metrics):
    record = {"step": step, "epoch": step / steps_per_epoch,
              "learning_rate": float(learning_rate(step - 1)),
              **{k: float(v) for k, v in values.items()}}
    if not math.isfinite(record["online_train_loss"]):
      return records, (f"The training loss is {record['online_train_loss']}"
                       f" at step {step}.")
    records.append(record)
  return records, ""


class MetricsLog:
  """Appends records to `<run_dir>/metrics.jsonl` and `<run_dir>/tb/`."""

  def __init__(self, run_dir: str | pathlib.Path, *, last_step: int,
               enabled: bool = True):
    """Cuts the log back to `last_step` and opens it.

    Records past the restored step will be redone, so they are dropped:
    `metrics.jsonl` is rewritten atomically, and `tb/` is rewritten from it,
    since event files cannot be truncated (and TensorBoard's own purge of
    redone steps is not seen by other readers of the events). A crash while
    `tb/` is rewritten is repaired by the next resume the same way.

    Args:
      run_dir: the run directory.
      last_step: the step the run resumes from (0: a new run).
      enabled: False on every process but the first (nothing is written).
    """
    self.path = pathlib.Path(run_dir) / "metrics.jsonl"
    self._writer = None
    if not enabled:
      return
    kept = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    checkpointing.write_atomically(
        self.path, "".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(self.path.parent / "tb", ignore_errors=True)
    self._writer = tensorboardX.SummaryWriter(str(self.path.parent / "tb"))
    for record in kept:
      self._add_scalars(record)
    self._writer.flush()

  def _add_scalars(self, record: Record) -> None:
    for key, value in record.items():
      if key not in ("step", "epoch"):
        self._writer.add_scalar(key, value, record["step"])

  def write(self, record: Record) -> None:
    """Appends one record (a "step" and "epoch" and scalar metrics)."""
    if self._writer is None:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    self._add_scalars(record)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
