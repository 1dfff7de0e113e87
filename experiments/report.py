"""Run aggregation: comparisons, the paper's tables (mean ± std over seeds) and figures.

- `plot_run(run_dir)`: `curves.png` of one run (the trainer calls it).
- `compare(root)`: a Markdown comparison of the runs under `root` (e.g. one
  preset): the shared point's training loss reached, the steps to reach
  the baseline's final one and the speed-up, the task's test metric, wall
  time.
- `write_report(runs_root)`: every preset found under `runs_root` as the
  paper's table (our mean ± std next to the published value) or figure.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
# The object-oriented Figure draws to files without pyplot, so importing this
# module never changes the caller's backend (notebooks keep inline plots).
from matplotlib.figure import Figure

from experiments.configs.paper_results import PAPER_RESULTS
from experiments.metrics_log import read_metrics

# Training losses are noisy per step; comparisons use a running mean over this
# fraction of an epoch's records (at least one record).
SMOOTHING_EPOCHS = 1.0
# The shared point's training loss compared between methods (classification).
SHARED_LOSS = "shared_point_train_loss"
# The same point's loss with BatchNorm on each local batch's own statistics.
SHARED_LOSS_BATCH_STATS = "shared_point_train_loss_batch_stats"
# A run's final loss is the mean of its last few measurements.
FINAL_POINTS = 3


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
  """(steps, epochs, running mean of the online training loss over an epoch).

  The online loss is measured where each worker's gradient was taken (the
  extrapolated point z for EXTRAP-SGD), in training mode on augmented batches.
  """
  steps, epochs, loss = _curve(records, "online_train_loss")
  if not len(loss):
    return steps, epochs, loss
  per_epoch = len(loss) / max(epochs[-1], 1e-9)
  window = max(1, int(round(SMOOTHING_EPOCHS * per_epoch)))
  cumulative = np.cumsum(np.insert(loss, 0, 0.0))
  lows = np.maximum(np.arange(1, len(loss) + 1) - window, 0)
  counts = np.arange(1, len(loss) + 1) - lows
  return steps, epochs, (cumulative[1:] - cumulative[lows]) / counts


def steps_to_reach(records: list[dict[str, Any]], target: float) -> float:
  """The first step whose smoothed online loss is <= target (nan: never)."""
  steps, _, loss = smoothed_train_loss(records)
  reached = np.nonzero(loss <= target + 1e-12)[0]
  return float(steps[reached[0]]) if len(reached) else math.nan


def final_value(records: list[dict[str, Any]], key: str,
                points: int = FINAL_POINTS) -> float:
  """Mean of the last `points` measurements of `key` (nan: none)."""
  values = [r[key] for r in records if key in r]
  if not values:
    return math.nan
  return float(np.mean(values[-points:]))


def first_crossing(records: list[dict[str, Any]], key: str, target: float,
                   window: int = 1) -> float:
  """The first step at which `key` reaches `target` or below (nan: never).

  With `window` > 1 the curve is first replaced by its trailing mean over
  `window` measurements (the value at a step averages it with the
  `window - 1` measurements before), so that one lucky measurement does not
  count as reaching the target; `final_value` with the same count is the
  last point of that curve. The crossing is linearly interpolated between
  the two points around it, so that it does not snap to the measurement
  interval.
  """
  points = [(r["step"], r[key]) for r in records if key in r]
  values = np.asarray([v for _, v in points], float)
  cumulative = np.cumsum(np.insert(values, 0, 0.0))
  previous = None
  for i, (step, _) in enumerate(points):
    low = max(0, i + 1 - window)
    value = (cumulative[i + 1] - cumulative[low]) / (i + 1 - low)
    if value <= target + 1e-12:
      if previous is None or previous[1] == value:
        return float(step)
      step0, value0 = previous
      return float(step0 + (value0 - target) / (value0 - value)
                   * (step - step0))
    previous = (step, value)
  return math.nan


def _group(runs, key=lambda s: s["name"]):
  groups = collections.OrderedDict()
  for run in runs:
    groups.setdefault(key(run["summary"]), []).append(run)
  return groups


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values) -> float:
  values = _finite(values)
  return float(np.mean(values)) if values else math.nan


def format_mean_sd(values: Sequence[float | None], digits: int = 2) -> str:
  """The finite `values` as "mean ± sample SD", one as itself, none as "n/a"."""
  values = _finite(values)
  if not values:
    return "n/a"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return (f"{np.mean(values):.{digits}f} ± "
          f"{np.std(values, ddof=1):.{digits}f}")


def _metric_scale(metric: str) -> float:
  return 100.0 if metric.endswith("accuracy") else 1.0


def compare(root: pathlib.Path, key: str = SHARED_LOSS,
            claimed_speedup: float | None = None,
            baseline: tuple[str, str] | None = None) -> str:
  """Markdown comparison of the runs under `root`, grouped by run name.

  Methods are compared at the same kind of point: by the shared point's
  training loss `key` (by default `shared_point_train_loss`, y in eval mode,
  what every method evaluates and ships) when the runs measured it, else by
  the smoothed online training loss.
  The target is the baseline's final loss (the mean of its last
  `FINAL_POINTS` measurements) when `baseline`, (run name, label), names a
  run that is there, else the highest of the runs' final losses; "steps to
  target" is when each run's loss, averaged over its last `FINAL_POINTS`
  measurements, first reached it (interpolated, mean over seeds), and the
  speed-up is the baseline's steps over the method's, seed by seed.

  With `claimed_speedup` (the paper's "at least 2x"), each method's line
  says plainly whether its mean speed-up reaches that claim.
  """
  runs = load_runs(root)
  if not runs:
    return f"No runs with a summary.json under {root}."
  shared = all(any(key in r for r in run["metrics"]) for run in runs)
  if shared:
    loss_name = f"shared-point training loss ({key})"

    def final(records):
      return final_value(records, key)

    def reach(records, target):
      return first_crossing(records, key, target, FINAL_POINTS)
  else:
    loss_name = (f"online training loss at the gradient's point, smoothed "
                 f"over {SMOOTHING_EPOCHS:g} epoch")

    def final(records):
      loss = smoothed_train_loss(records)[2]
      return float(loss[-1]) if len(loss) else math.nan

    def reach(records, target):
      return steps_to_reach(records, target)

  groups = _group(runs, key=lambda s: (s["name"], s.get("row", "")))
  base_name, base_label = baseline or ("", "")
  baseline = [m for (name, _), m in groups.items() if name == base_name]
  targets_by_seed, common = {}, math.nan
  if baseline:
    targets_by_seed = {m["summary"]["seed"]: final(m["metrics"])
                       for m in baseline[0]}
    target_text = f"{base_label}'s final loss, per seed"
  else:
    finals = [final(r["metrics"]) for r in runs]
    common = max((f for f in finals if math.isfinite(f)), default=math.nan)
    target_text = f"{common:.4f}, the highest final loss of the runs"
  metric = runs[0]["summary"]["main_metric"]
  scale = _metric_scale(metric)
  lines = [f"Runs under {root}, compared by the {loss_name}; final = mean "
           f"of the last {FINAL_POINTS} measurements; target = "
           f"{target_text}.", "",
           f"| run | seeds | status | steps | final loss | steps to target "
           f"| {metric} | wall s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  reached: dict[str, dict[int, float]] = {}
  for (name, _), members in groups.items():
    summaries = [m["summary"] for m in members]
    seeds = len(members)
    reached[name] = {}
    for member in members:
      seed = member["summary"]["seed"]
      target = targets_by_seed.get(seed, math.nan) if baseline else common
      reached[name][seed] = reach(member["metrics"], target)
    statuses = ",".join(sorted({s["status"] for s in summaries}))
    metric_values = [None if s.get(f"final_{metric}") is None
                     else s[f"final_{metric}"] * scale for s in summaries]
    steps = max(s["steps"] for s in summaries)
    lines.append(
        f"| {name} | {seeds} | {statuses} | {steps} | "
        f"{format_mean_sd([final(m['metrics']) for m in members], 4)} | "
        f"{format_mean_sd(reached[name].values(), 0)} | "
        f"{format_mean_sd(metric_values)} | "
        f"{_mean(s['wall_seconds'] for s in summaries):.0f} |")
  base = reached.get(base_name, {})
  for name, by_seed in reached.items():
    if name == base_name or not base:
      continue
    ratios = [base[seed] / steps for seed, steps in by_seed.items()
              if seed in base and math.isfinite(steps) and steps > 0]
    missed = sum(1 for seed, steps in by_seed.items()
                 if seed in base and not math.isfinite(steps))
    # One draw of a quantity whose seed-to-seed spread is of the size of
    # the effect: a verdict from it flips between machines.
    one_seed = len(ratios) + missed == 1
    lines.append("")
    if ratios:
      mean = _mean(ratios)
      shown = round(mean, 2)
      verdict = ("faster" if shown > 1 else "slower" if shown < 1
                 else "no faster, no slower")
      if one_seed:
        verdict += " in this one seed"
      lines.append(
          f"{name} reached {base_label}'s final loss {mean:.2f}x as fast "
          f"({verdict}; {format_mean_sd(ratios)} over "
          f"{len(ratios)} seed(s)" + (f", not reached in {missed}" if missed
                                      else "") + ").")
    else:
      mean = math.nan
      lines.append(f"{name} did not reach {base_label}'s final loss.")
    if claimed_speedup is not None:
      shown = "never" if math.isnan(mean) else f"{mean:.2f}x"
      if one_seed:
        claim = ("From one seed, which can neither show nor rule out the "
                 "effect; its spread over seeds is measured by the study.")
      elif not math.isnan(mean) and mean >= claimed_speedup and not missed:
        claim = "The claimed effect shows at this size."
      else:
        claim = "The claimed effect is NOT there at this size."
      lines.append(f"The paper reports at least {claimed_speedup:g}x; "
                   f"measured here: {shown}. {claim}")
  return "\n".join(lines) + "\n"


def plot_run(run_dir: pathlib.Path) -> pathlib.Path:
  """Draws `curves.png`: training loss and every evaluation metric vs epoch."""
  run_dir = pathlib.Path(run_dir)
  records = read_metrics(run_dir)
  keys = ["online_train_loss"] + sorted(
      {k for r in records for k in r
       if k.startswith(("test_", "valid_", "shared_point_"))}
      | {k for r in records for k in r
         if k == "smoothness" or k.startswith("extrapolation_ratio")})
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


def plot_comparison(groups: dict[str, list[dict[str, Any]]],
                    path: pathlib.Path,
                    keys: Sequence[str] = (SHARED_LOSS,)) -> pathlib.Path:
  """One Figure-1-style comparison: every method on the same axes.

  One panel per loss in `keys` (the shared point's training losses, or its
  validation loss `valid_loss`) against epochs, the mean over seeds with the
  seeds' range shaded, and in the first panel each method's online loss at
  its gradient's point (first seed, smoothed) dotted; a last panel has the
  smoothness L of the probed steps, mean over the seeds that probed, when
  any run probed.

  Args:
    groups: label -> runs (as `load_runs` gives them), one entry per method.
    path: the PNG file to write.
    keys: the losses to draw.

  Returns:
    `path`.
  """
  probed = any("smoothness" in record for runs in groups.values()
               for run in runs for record in run["metrics"])
  panels = len(keys) + probed
  fig = Figure(figsize=(5.5 * panels, 4))
  axes = list(fig.subplots(1, panels, squeeze=False)[0])
  loss_axes = axes[:len(keys)]
  smooth_ax = axes[-1] if probed else None
  for index, (label, runs) in enumerate(groups.items()):
    color = f"C{index}"
    for ax, key in zip(loss_axes, keys):
      curves = [c for c in (_curve(r["metrics"], key) for r in runs)
                if len(c[0])]
      if not curves:
        continue
      length = min(len(c[1]) for c in curves)
      values = np.stack([c[2][:length] for c in curves])
      epochs = curves[0][1][:length]
      ax.plot(epochs, values.mean(0), color=color,
              label=f"{label} ({len(curves)} seed"
              f"{'s' if len(curves) > 1 else ''})")
      if len(curves) > 1:
        ax.fill_between(epochs, values.min(0), values.max(0), color=color,
                        alpha=0.2)
    for _, epochs, values in (smoothed_train_loss(r["metrics"])
                              for r in runs[:1]):
      loss_axes[0].plot(epochs, values, color=color, ls=":", lw=1,
                        label=f"{label}: online loss at the gradient's point")
    probes = [p for p in (_curve(r["metrics"], "smoothness") for r in runs)
              if len(p[0])]
    if probes:  # Then smooth_ax exists.
      length = min(len(p[1]) for p in probes)
      values = np.stack([p[2][:length] for p in probes])
      smooth_ax.plot(probes[0][1][:length], values.mean(0), color=color,
                     marker="o", label=f"{label} ({len(probes)} seed"
                     f"{'s' if len(probes) > 1 else ''})")
  for ax, key in zip(loss_axes, keys):
    kind = "validation" if key.startswith("valid_") else "training"
    ax.set(xlabel="epoch", ylabel=key, yscale="log",
           title=f"{kind} loss of the shared point y\n({key})")
    ax.legend(fontsize=6)
  if smooth_ax is not None:
    smooth_ax.set(xlabel="epoch", ylabel="L", yscale="log",
                  title="smoothness L of the step")
    if smooth_ax.lines:
      smooth_ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return pathlib.Path(path)


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
      ours = [m["summary"].get(f"final_{metric}") * scale for m in members
              if m["summary"].get(f"final_{metric}") is not None]
      text = format_mean_sd(ours) if members else "not run"
      if (row, column) in published:
        mean, std = published[(row, column)]
        text += f" / {mean:.2f} ± {std:.2f}"
      entries.append(text)
    lines.append(f"| {row} | " + " | ".join(entries) + " |")
  return "\n".join(lines)


def _figure(runs: list[dict[str, Any]], out: pathlib.Path,
            name: str) -> pathlib.Path:
  """Curves of every run (mean over seeds): training loss and test metrics."""
  keys = ["online_train_loss"] + sorted(
      {k for r in runs for rec in r["metrics"] for k in rec
       if k.startswith(("test_", "valid_", "shared_point_"))
       or k == "smoothness"})
  fig = Figure(figsize=(4.2 * len(keys), 3.4))
  axes = fig.subplots(1, len(keys), squeeze=False)
  for label, members in _group(runs).items():
    for ax, key in zip(axes[0], keys):
      curves = [_curve(m["metrics"], key) if key != "online_train_loss"
                else smoothed_train_loss(m["metrics"]) for m in members]
      length = min(len(c[1]) for c in curves)
      if not length:
        continue
      mean = np.mean([c[2][:length] for c in curves], axis=0)
      ax.plot(curves[0][1][:length], mean, label=label,
              marker="." if length < 20 else None)
  for ax, key in zip(axes[0], keys):
    ax.set_xlabel("epoch")
    ax.set_title(key + (" (smoothed)" if key == "online_train_loss" else ""))
    if key in ("online_train_loss", SHARED_LOSS, "smoothness"):
      ax.set_yscale("log")
  axes[0][0].legend(fontsize=7)
  fig.suptitle(name)
  fig.tight_layout()
  path = out / f"{name}.png"
  fig.savefig(path, dpi=110)
  return path


def _preset_baseline(directory: str) -> tuple[str, str] | None:
  """The baseline of the preset run in `<preset>-<scale>` (None: none)."""
  from experiments import configs

  name, _, scale = directory.rpartition("-")
  if name not in configs.PRESETS or scale not in configs.SCALES:
    return None
  return configs.get_preset(name, scale).reference


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
                 compare(runs_root / directory,
                         baseline=_preset_baseline(directory)), ""]
  text = "\n".join(sections)
  (out / "report.md").write_text(text)
  return text
