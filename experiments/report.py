"""Learning-curve figures of one run (placeholder until the report lands)."""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
  """The records of `metrics.jsonl`."""
  path = pathlib.Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_run(run_dir: pathlib.Path) -> pathlib.Path:
  """Draws `curves.png`: training loss and every evaluation metric vs epoch."""
  run_dir = pathlib.Path(run_dir)
  records = read_metrics(run_dir)
  keys = ["train_loss"] + sorted({k for r in records for k in r
                                  if k.startswith(("test_", "valid_"))}
                                 | ({"smoothness"} if any(
                                     "smoothness" in r for r in records)
                                    else set()))
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2),
                           squeeze=False)
  for ax, key in zip(axes[0], keys):
    points = [(r["epoch"], r[key]) for r in records if key in r]
    if points:
      ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_title(key)
  fig.tight_layout()
  path = run_dir / "curves.png"
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
