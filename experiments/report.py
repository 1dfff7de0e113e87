"""Run aggregation: comparisons, the paper's tables (mean ± std over seeds) and figures.

- `plot_run(run_dir)`: `curves.png` of one run (the trainer calls it).
- `compare(root)`: a Markdown comparison of the runs under `root` (e.g. one
  preset): training loss reached, steps to reach a common training loss, the
  task's test metric, wall time.
- `write_report(runs_root)`: every preset found under `runs_root` as the
  paper's table (our mean ± std next to the published value) or figure.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
from typing import Any

import numpy as np
# The object-oriented Figure draws to files without pyplot, so importing this
# module never changes the caller's backend (notebooks keep inline plots).
from matplotlib.figure import Figure

from experiments.configs.paper_results import PAPER_RESULTS

# Training losses are noisy per step; comparisons use a running mean over this
# fraction of an epoch's records (at least one record).
SMOOTHING_EPOCHS = 1.0


def read_metrics(run_dir: pathlib.Path) -> list[dict[str, Any]]:
  """The records of `metrics.jsonl`."""
  path = pathlib.Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def load_runs(root: pathlib.Path) -> list[dict[str, Any]]:
  """Every run under `root` with a summary: summary, metrics and directory."""
  runs = []
  for path in sorted(pathlib.Path(root).rglob("summary.json")):
    summary = json.loads(path.read_text())
    runs.append({"summary": summary, "metrics": read_metrics(path.parent),
                 "dir": path.parent})
  return runs


def _curve(records, key):
  points = [(r["step"], r["epoch"], r[key]) for r in records if key in r]
  if not points:
    return np.zeros(0), np.zeros(0), np.zeros(0)
  return tuple(np.asarray(x, float) for x in zip(*points))


def smoothed_train_loss(records: list[dict[str, Any]]):
  """(steps, epochs, running mean of the training loss over about an epoch)."""
  steps, epochs, loss = _curve(records, "train_loss")
  if not len(loss):
    return steps, epochs, loss
  per_epoch = len(loss) / max(epochs[-1], 1e-9)
  window = max(1, int(round(SMOOTHING_EPOCHS * per_epoch)))
  cumulative = np.cumsum(np.insert(loss, 0, 0.0))
  lows = np.maximum(np.arange(1, len(loss) + 1) - window, 0)
  counts = np.arange(1, len(loss) + 1) - lows
  return steps, epochs, (cumulative[1:] - cumulative[lows]) / counts


def steps_to_reach(records: list[dict[str, Any]], target: float) -> float:
  """The first step whose smoothed training loss is <= target (nan: never)."""
  steps, _, loss = smoothed_train_loss(records)
  reached = np.nonzero(loss <= target + 1e-12)[0]
  return float(steps[reached[0]]) if len(reached) else math.nan


def _group(runs, key=lambda s: s["name"]):
  groups = collections.OrderedDict()
  for run in runs:
    groups.setdefault(key(run["summary"]), []).append(run)
  return groups


def _mean_std(values) -> tuple[float, float]:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return math.nan, math.nan
  return float(np.mean(values)), float(np.std(values))


def _fmt(mean: float, std: float, seeds: int, digits: int = 2) -> str:
  if math.isnan(mean):
    return "n/a"
  return (f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1
          else f"{mean:.{digits}f}")


def _metric_scale(metric: str) -> float:
  return 100.0 if metric.endswith("accuracy") else 1.0


def compare(root: pathlib.Path) -> str:
  """Markdown comparison of the runs under `root`, grouped by run name.

  The common target is the highest of the groups' lowest smoothed training
  losses, i.e. the best loss every method reached; "steps to target" is when
  each method first reached it (mean over seeds).
  """
  runs = load_runs(root)
  if not runs:
    return f"No runs with a summary.json under {root}."
  groups = _group(runs, key=lambda s: (s["name"], s.get("row", "")))
  best = {name: min((float(np.min(smoothed_train_loss(r["metrics"])[2]))
                     for r in members if r["metrics"]), default=math.nan)
          for name, members in groups.items()}
  finite = [b for b in best.values() if math.isfinite(b)]
  target = max(finite) if finite else math.nan
  metric = runs[0]["summary"]["main_metric"]
  scale = _metric_scale(metric)
  lines = [f"Runs under {root} (training loss smoothed over "
           f"{SMOOTHING_EPOCHS:g} epoch; target = {target:.4f}, the lowest "
           "smoothed loss that every run reached).", "",
           f"| run | seeds | status | steps | final train loss | lowest "
           f"smoothed loss | steps to loss {target:.4f} | {metric} | wall s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  reach = {}
  for (name, row), members in groups.items():
    summaries = [m["summary"] for m in members]
    seeds = len(members)
    reach[name] = _mean_std(steps_to_reach(m["metrics"], target)
                            for m in members)
    statuses = ",".join(sorted({s["status"] for s in summaries}))
    final = _mean_std(s.get("final_train_loss") for s in summaries)
    metric_value = _mean_std(
        None if s.get(f"final_{metric}") is None
        else s[f"final_{metric}"] * scale for s in summaries)
    wall = _mean_std(s["wall_seconds"] for s in summaries)
    steps = max(s["steps"] for s in summaries)
    lines.append(
        f"| {name} | {seeds} | {statuses} | {steps} | "
        f"{_fmt(*final, seeds, 4)} | {best[(name, row)]:.4f} | "
        f"{_fmt(*reach[name], seeds, 0)} | {_fmt(*metric_value, seeds)} | "
        f"{wall[0]:.0f} |")
  baseline = reach.get("minibatch_sgd", (math.nan,))[0]
  for name, (steps, _) in reach.items():
    if name != "minibatch_sgd" and math.isfinite(baseline) and math.isfinite(
        steps) and steps > 0:
      lines.append("")
      lines.append(f"{name} reached training loss {target:.4f} at step "
                   f"{steps:.0f}, mini-batch SGD at step {baseline:.0f} "
                   f"(speed-up {baseline / steps:.2f}x).")
  return "\n".join(lines) + "\n"


def plot_run(run_dir: pathlib.Path) -> pathlib.Path:
  """Draws `curves.png`: training loss and every evaluation metric vs epoch."""
  run_dir = pathlib.Path(run_dir)
  records = read_metrics(run_dir)
  keys = ["train_loss"] + sorted(
      {k for r in records for k in r if k.startswith(("test_", "valid_"))}
      | {k for r in records for k in r if k == "smoothness"})
  fig = Figure(figsize=(4 * len(keys), 3.2))
  axes = fig.subplots(1, len(keys), squeeze=False)
  for ax, key in zip(axes[0], keys):
    _, epochs, values = _curve(records, key)
    ax.plot(epochs, values, marker="." if len(values) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_title(key)
  fig.tight_layout()
  path = run_dir / "curves.png"
  fig.savefig(path, dpi=100)
  return path


def _table(preset: str, runs: list[dict[str, Any]]) -> str:
  """Rows x columns of the main metric, ours next to the paper's."""
  metric = runs[0]["summary"]["main_metric"]
  scale = _metric_scale(metric)
  cells = _group(runs, key=lambda s: (s["row"], s["column"]))
  rows = list(dict.fromkeys(r for r, _ in cells))
  columns = list(dict.fromkeys(c for _, c in cells))
  published = PAPER_RESULTS.get(preset, {})
  lines = [f"| {metric} (ours / paper) | " + " | ".join(columns) + " |",
           "| --- |" + " --- |" * len(columns)]
  for row in rows:
    entries = []
    for column in columns:
      members = cells.get((row, column), [])
      ours = _mean_std(m["summary"].get(f"final_{metric}") * scale
                       for m in members
                       if m["summary"].get(f"final_{metric}") is not None)
      text = _fmt(*ours, len(members)) if members else "not run"
      if (row, column) in published:
        mean, std = published[(row, column)]
        text += f" / {mean:.2f} ± {std:.2f}"
      entries.append(text)
    lines.append(f"| {row} | " + " | ".join(entries) + " |")
  return "\n".join(lines)


def _figure(runs: list[dict[str, Any]], out: pathlib.Path,
            name: str) -> pathlib.Path:
  """Curves of every run (mean over seeds): training loss and test metrics."""
  keys = ["train_loss"] + sorted(
      {k for r in runs for rec in r["metrics"] for k in rec
       if k.startswith(("test_", "valid_")) or k == "smoothness"})
  fig = Figure(figsize=(4.2 * len(keys), 3.4))
  axes = fig.subplots(1, len(keys), squeeze=False)
  for label, members in _group(runs).items():
    for ax, key in zip(axes[0], keys):
      curves = [_curve(m["metrics"], key) if key != "train_loss"
                else smoothed_train_loss(m["metrics"]) for m in members]
      length = min(len(c[1]) for c in curves)
      if not length:
        continue
      mean = np.mean([c[2][:length] for c in curves], axis=0)
      ax.plot(curves[0][1][:length], mean, label=label,
              marker="." if length < 20 else None)
  for ax, key in zip(axes[0], keys):
    ax.set_xlabel("epoch")
    ax.set_title(key + (" (smoothed)" if key == "train_loss" else ""))
    if key in ("train_loss", "smoothness"):
      ax.set_yscale("log")
  axes[0][0].legend(fontsize=7)
  fig.suptitle(name)
  fig.tight_layout()
  path = out / f"{name}.png"
  fig.savefig(path, dpi=110)
  return path


def write_report(runs_root: pathlib.Path,
                 out: pathlib.Path | None = None) -> str:
  """Writes `report.md` and one figure per preset; returns the Markdown."""
  runs_root = pathlib.Path(runs_root)
  out = pathlib.Path(out) if out else runs_root / "report"
  out.mkdir(parents=True, exist_ok=True)
  runs = load_runs(runs_root)
  sections = [f"# Results under {runs_root}", ""]
  # Each preset and scale lives in its own top-level directory.
  by_dir = collections.OrderedDict()
  for run in runs:
    by_dir.setdefault(run["dir"].relative_to(runs_root).parts[0], []).append(run)
  for directory, members in by_dir.items():
    preset = members[0]["summary"].get("preset") or "runs"
    sections += [f"## {directory}", ""]
    if preset.startswith("table") or preset == "fig4":
      sections += [_table(preset, members), ""]
    figure = _figure(members, out, directory)
    sections += [f"![{directory}]({figure.name})", "",
                 compare(runs_root / directory), ""]
  text = "\n".join(sections)
  (out / "report.md").write_text(text)
  return text
