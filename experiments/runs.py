"""One run directory at a time: skip it when finished, else train or resume it.

The `run` and `study` commands both go through here: a run directory whose
`summary.json` has a finished status is skipped; any other is trained, and
resumed from its newest checkpoint if it has one (`experiments.train`). A
run that diverges is finished too: its summary says "diverged".
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import ml_collections


def read_summary(directory: pathlib.Path) -> dict[str, Any] | None:
  """The run's `summary.json`, or None before it has one."""
  path = pathlib.Path(directory) / "summary.json"
  return json.loads(path.read_text()) if path.exists() else None


def finished_summary(directory: pathlib.Path,
                     statuses: tuple[str, ...]) -> dict[str, Any] | None:
  """The run's summary when its status is one of `statuses`, else None."""
  summary = read_summary(directory)
  return summary if summary and summary["status"] in statuses else None


def train(config: ml_collections.ConfigDict, directory: pathlib.Path,
          stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run in `directory`; its summary.

  A diverged run is reported on stderr and returns its "diverged" summary.
  """
  from experiments import train as trainer  # Imports jax: not at startup.

  try:
    return trainer.train_and_evaluate(config, directory,
                                      stop_at_step=stop_at_step).summary
  except trainer.TrainingDivergedError as error:
    print(error, file=sys.stderr)
    return read_summary(directory)
