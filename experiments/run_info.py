"""Where a run came from (code version, machine) and its `summary.json`."""

from __future__ import annotations

import datetime
import functools
import json
import os
import pathlib
import platform
import subprocess
from typing import Any

import jax

import extrap_optax
from experiments import checkpointing


@functools.cache
def machine() -> str:
  """The CPU model and core count, and the jax version and backend.

  Runs of one study may come from different machines (one session at a time):
  a run's summary says which trained it, since floating-point results differ
  in the last bits from one CPU to another.
  """
  model = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return (f"{model}, {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{jax.default_backend()}")


@functools.cache
def code_version() -> str:
  """The git commit of this checkout (`-dirty` if modified), else the version.

  Cached: the first call (the first run of a process) names the code the
  process loaded, even if the checkout changes while it runs.
  """
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
        capture_output=True, text=True, check=True,
        timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return f"extrap_optax {extrap_optax.__version__}"


def write_summary(workdir: pathlib.Path, fields: dict[str, Any],
                  main_process: bool = True) -> dict[str, Any]:
  """Writes `<workdir>/summary.json`: `fields`, the code and the machine.

  Returns:
    The summary written (also off the main process, which writes nothing).
  """
  summary = {**fields, "code_version": code_version(), "machine": machine(),
             "finished_at": datetime.datetime.now(
                 datetime.timezone.utc).isoformat(timespec="seconds")}
  if main_process:
    checkpointing.write_atomically(pathlib.Path(workdir) / "summary.json",
                                   json.dumps(summary, indent=2))
  return summary
