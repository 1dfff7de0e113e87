"""A reproduction study: tune the baseline, tune the extrapolation, repeat the best.

The paper's protocol (App. C.1) as one resumable command:

1. **Baseline**: the baseline method (mini-batch SGD, or Adam) at every value
   of its tuning grid (γ0 in {0.05, 0.10, 0.15, 0.20}; the inverse-square-
   root schedule's scale for Adam), at the tuning seed; the best is the
   lowest final value of the study's criterion (the shared point's training
   loss; its validation loss for the Transformer).
2. **Extrapolation**: each extrapolated variant reuses the baseline's best
   value and tunes its own factor c at the tuning seed.
3. **Seeds**: the baseline's and each variant's best, at every comparison
   seed (with the study's extra seed-run settings, e.g. the smoothness
   probe), seed by seed across the methods.

Every grid, the baseline's included, is extended one value at a time
(halving below, doubling above) until its best value lies inside it, as App.
C.1 says of all its hyperparameters ("the best hyper-parameter lies in the
middle of our search grids; otherwise we extend our search grid").

The comparison seeds exclude the tuning seed: the run that won the tuning is
the best of several draws of the noise at that seed, so including it would
bias each method's comparison towards the method with the larger grid (the
winner's curse). Tuning chooses; the comparison seeds measure.

Every run is an ordinary trainer run directory (`experiments.train`):
completed runs are skipped, interrupted ones resume from their newest
checkpoint, and every choice is a function of completed runs' results. So a
stopped study, started again with the same command, continues exactly where
it stopped and ends with the same results as an uninterrupted one.

The final value of the criterion is the mean of its last `final_points`
measurements (e.g. the last three epochs), less noisy than the last one; the
steps to reach a target are counted on the same trailing mean.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from experiments import report



@dataclasses.dataclass(frozen=True)
class Variant:
  """An extrapolated method of the study and its tuned factor.

  Attributes:
    name: the run name, e.g. "extrap_sgd" or "extrap_sgd_trust_ratio".
    label: how the report names it.
    overrides: dotted config key -> value (the method and its options).
    tuned_key: the dotted key of the tuned factor (c).
    grid: the initial grid of c.
  """
  name: str
  label: str
  overrides: dict[str, Any]
  tuned_key: str
  grid: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Study:
  """What a study runs; see the module docstring.

  Attributes:
    name: e.g. "fig1_cpu".
    description: the paper's experiment it reproduces, and at which scale.
    base: the configuration every run starts from.
    baseline: (run name, label, overrides) of the baseline method.
    baseline_key: the dotted key tuned for the baseline.
    baseline_grid: its values.
    variants: the extrapolated methods.
    criterion: the metric tuned for and compared (lower is better), as the
      trainer records it at the shared point: "shared_point_train_loss"
      (classification), "valid_loss" (translation, language modelling).
    secondary_criteria: more metrics compared the same way (not tuned for).
    test_metric: the test metric reported next to them, from each run's
      summary (`final_<test_metric>`; accuracies in %).
    tuning_seed: the seed of the tuning runs (stages 1 and 2).
    seeds: the comparison seeds (stage 3), the tuning seed excluded.
    seed_overrides: extra settings of the seed runs (probes, which do not
      change the trajectory).
    max_extensions: how many values any grid (the baseline's and each
      variant's) may grow by on each side.
    final_points: measurements averaged for the final criterion value.
  """
  name: str
  description: str
  base: ml_collections.ConfigDict
  baseline: tuple[str, str, dict[str, Any]]
  baseline_key: str
  baseline_grid: tuple[float, ...]
  variants: tuple[Variant, ...]
  criterion: str = "shared_point_train_loss"
  secondary_criteria: tuple[str, ...] = ()
  test_metric: str = "test_accuracy"
  tuning_seed: int = 0
  seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
  seed_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  max_extensions: int = 2
  final_points: int = 3


class BudgetExhausted(Exception):
  """The invocation's step budget ran out; run the command again to go on."""


def _tag(key: str, value: float) -> str:
  return f"{key.split('.')[-1]}={value:g}"


def _apply(config: ml_collections.ConfigDict,
           overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise ValueError(f"Unknown config field {key!r} in a study override.")
    node[leaf] = float(value) if isinstance(node[leaf], float) else value
  return config


class StudyRunner:
  """Runs a `Study` under one directory; see the module docstring."""

  def __init__(self, study: Study, root: pathlib.Path, *,
               max_steps: int | None = None, dry_run: bool = False,
               train_fn: Callable[[ml_collections.ConfigDict, pathlib.Path,
                                   int | None], dict[str, Any]] | None = None,
               log: Callable[[str], None] = print):
    """Prepares the study.

    Args:
      study: what to run.
      root: the study's directory; each run is a trainer run directory
        under it.
      max_steps: train at most this many steps in this invocation, then
        raise `BudgetExhausted` (the next invocation resumes); None: no limit.
      dry_run: list the runs that the current results call for, train none.
      train_fn: (config, run dir, stop_at_step) -> summary; default
        `experiments.train.Trainer(config, run_dir).train(stop_at_step)`.
      log: where progress lines go.
    """
    self.study = study
    self.root = pathlib.Path(root)
    self.budget = max_steps
    self.dry_run = dry_run
    self.train_fn = train_fn or _train
    self.log = log
    self.planned: list[tuple[str, pathlib.Path]] = []

  # Runs.

  def _config(self, name: str, column: str, overrides: dict[str, Any],
              seed: int) -> ml_collections.ConfigDict:
    config = _apply(self.study.base, overrides)
    config.name = name
    config.column = column
    config.seed = seed
    return config

  def run(self, label: str, config: ml_collections.ConfigDict,
          directory: pathlib.Path) -> list[dict[str, Any]] | None:
    """Trains, resumes or skips one run; its records (None: not done)."""
    _check_same_config(config, directory)
    summary_path = directory / "summary.json"
    if summary_path.exists():
      summary = json.loads(summary_path.read_text())
      if summary["status"] in ("completed", "diverged"):
        return report.read_metrics(directory)
    if self.dry_run:
      self.planned.append((label, directory))
      return None
    if self.budget is not None and self.budget <= 0:
      raise BudgetExhausted(f"step budget spent before {label}")
    done_before = _steps_done(directory)
    stop = None
    if self.budget is not None:
      stop = done_before + self.budget
    self.log(f"== {label} -> {directory}")
    start = time.perf_counter()
    summary = self.train_fn(config, directory, stop)
    if self.budget is not None:
      self.budget -= summary["steps"] - done_before
    self.log(f"   {label}: {summary['status']} at step {summary['steps']} "
             f"({time.perf_counter() - start:.0f} s)")
    if summary["status"] not in ("completed", "diverged"):
      raise BudgetExhausted(f"step budget spent during {label}")
    return report.read_metrics(directory)

  def _score(self, records: list[dict[str, Any]] | None,
             directory: pathlib.Path) -> float:
    if records is None:
      return math.nan
    summary = json.loads((directory / "summary.json").read_text())
    return final_score(self.study, summary, records)

  # Stages.

  def _tune(self, name: str, overrides: dict[str, Any], key: str,
            grid: Sequence[float], max_extensions: int) -> float | None:
    """`key` over `grid` at the first seed, extended until its best is inside.

    The grid grows by halving its lowest value or doubling its highest while
    the best value is at that end, at most `max_extensions` times on each
    side. A grid of one value is a fixed setting, not a tuning: it is not
    extended.

    Returns:
      The best value, or None while some of its runs are not finished.
    """
    seed = self.study.tuning_seed
    grid = sorted(grid)
    scores: dict[float, float] = {}
    extensions = {"low": 0, "high": 0}
    while True:
      for value in grid:
        if value in scores:
          continue
        directory = self.root / "tune" / name / _tag(key, value) / f"seed{seed}"
        config = self._config(name, name, {**overrides, key: value}, seed)
        scores[value] = self._score(
            self.run(f"{name} {_tag(key, value)}", config, directory),
            directory)
      if any(math.isnan(scores[v]) for v in grid):
        return None
      best = min(grid, key=lambda v: scores[v])
      if len(grid) == 1:
        return best
      if best == grid[0] and extensions["low"] < max_extensions:
        extensions["low"] += 1
        grid.insert(0, grid[0] / 2)
      elif best == grid[-1] and extensions["high"] < max_extensions:
        extensions["high"] += 1
        grid.append(grid[-1] * 2)
      else:
        return best

  def tune_baseline(self) -> float | None:
    """Stage 1: the baseline's grid at the first seed; its best value."""
    study = self.study
    name, _, overrides = study.baseline
    return self._tune(name, overrides, study.baseline_key, study.baseline_grid,
                      study.max_extensions)

  def tune_variant(self, variant: Variant,
                   baseline_value: float) -> float | None:
    """Stage 2: c at the baseline's best value, over a grid extended until
    its best is inside."""
    study = self.study
    return self._tune(
        variant.name, {**variant.overrides, study.baseline_key: baseline_value},
        variant.tuned_key, variant.grid, study.max_extensions)

  def seed_run(self, name: str, overrides: dict[str, Any],
               seed: int) -> pathlib.Path:
    """Stage 3: one more seed of one method's best setting; its directory."""
    directory = self.root / "seeds" / name / f"seed{seed}"
    config = self._config(name, name, {**overrides,
                                       **self.study.seed_overrides}, seed)
    self.run(f"{name} seed {seed}", config, directory)
    return directory

  def execute(self) -> dict[str, Any]:
    """Runs what is still missing; returns the choices made (None: pending).

    Raises:
      BudgetExhausted: `max_steps` ran out (the next invocation resumes).
    """
    study = self.study
    name, _, overrides = study.baseline
    choices: dict[str, Any] = {"baseline": None, "variants": {},
                               "seed_dirs": {}}
    best = self.tune_baseline()
    if best is None:
      return choices
    choices["baseline"] = best
    plans = [(name, {**overrides, study.baseline_key: best})]
    for variant in study.variants:
      value = self.tune_variant(variant, best)
      choices["variants"][variant.name] = value
      if value is None:
        continue
      plans.append((variant.name, {
          **variant.overrides, study.baseline_key: best,
          variant.tuned_key: value}))
    seed_dirs = {method: [] for method, _ in plans}
    # Seed by seed across methods, so that a study stopped early holds
    # matched pairs of methods rather than one method's seeds.
    for seed in study.seeds:
      for method, method_overrides in plans:
        seed_dirs[method].append(
            self.seed_run(method, method_overrides, seed))
    choices["seed_dirs"] = {
        method: [str(p.relative_to(self.root)) for p in directories]
        for method, directories in seed_dirs.items()}
    return choices


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _check_same_config(config: ml_collections.ConfigDict,
                       directory: pathlib.Path) -> None:
  """Refuses to continue a run whose saved config differs from the study's.

  Raises:
    ValueError: naming the fields that differ.
  """
  path = directory / "config.json"
  if not path.exists():
    return
  saved = _flatten(json.loads(path.read_text()))
  wanted = _flatten(json.loads(config.to_json_best_effort()))
  differing = sorted(k for k in saved.keys() | wanted.keys()
                     if saved.get(k) != wanted.get(k))
  if differing:
    raise ValueError(
        f"{directory} was trained with another configuration than the study "
        f"now asks for (fields {', '.join(differing)}: saved "
        f"{[saved.get(k) for k in differing]}, now "
        f"{[wanted.get(k) for k in differing]}). Restore the study's "
        "definition, or delete that run directory to train it anew.")


def final_score(study: Study, summary: dict[str, Any],
                records: list[dict[str, Any]]) -> float:
  """A run's final criterion value; infinite when it diverged."""
  if summary["status"] == "diverged":
    return math.inf
  return report.final_value(records, study.criterion, study.final_points)


def _steps_done(directory: pathlib.Path) -> int:
  checkpoints = directory / "checkpoints"
  if not checkpoints.is_dir():
    return 0
  steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
  return max(steps, default=0)


def _train(config: ml_collections.ConfigDict, directory: pathlib.Path,
           stop_at_step: int | None) -> dict[str, Any]:
  from experiments import train

  try:
    return train.Trainer(config, directory).train(stop_at_step=stop_at_step)
  except train.TrainingDivergedError:
    return json.loads((directory / "summary.json").read_text())


# The report.


def _runs_under(directory: pathlib.Path) -> list[dict[str, Any]]:
  return report.load_runs(directory) if directory.is_dir() else []


def _fmt(values: Sequence[float], digits: int) -> str:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return "n/a"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return (f"{np.mean(values):.{digits}f} ± "
          f"{np.std(values, ddof=1):.{digits}f}")


def _ratio_summary(records: Sequence[dict[str, Any]]) -> str:
  medians = [r["extrapolation_ratio_median"] for r in records
             if "extrapolation_ratio_median" in r and r["step"] > 1]
  maxima = [r["extrapolation_ratio_max"] for r in records
            if "extrapolation_ratio_max" in r and r["step"] > 1]
  if not medians:
    return "n/a"
  return (f"{np.median(medians):.3f} [{np.percentile(medians, 10):.3f}, "
          f"{np.percentile(medians, 90):.3f}]; max {np.max(maxima):.2f}")


def _test_value(summary: dict[str, Any], metric: str) -> float | None:
  """The run's final `metric`, in % for an accuracy (None: not measured)."""
  value = summary.get(f"final_{metric}")
  if value is None:
    return None
  return 100 * value if metric.endswith("accuracy") else value


def _test_header(metric: str) -> str:
  """"test_accuracy" -> "test accuracy (%)", "test_bleu" -> "test BLEU"."""
  name = metric.replace("_", " ").replace("bleu", "BLEU")
  return f"{name} (%)" if metric.endswith("accuracy") else name


class _Reporter:
  """Reads a study's runs and writes its Markdown report and figure."""

  def __init__(self, study: Study, root: pathlib.Path):
    self.study = study
    self.root = root
    name, label, _ = study.baseline
    self.baseline = name
    self.labels = {name: label, **{v.name: v.label for v in study.variants}}

  def final(self, run: dict[str, Any], key: str | None = None) -> float:
    study = self.study
    if key is not None:
      study = dataclasses.replace(study, criterion=key)
    return final_score(study, run["summary"], run["metrics"])

  @property
  def criteria(self) -> tuple[str, ...]:
    return (self.study.criterion,) + self.study.secondary_criteria

  def tuning_table(self, method: str, key: str) -> list[str]:
    leaf = key.split(".")[-1]
    finals = " | ".join(f"final {k}" for k in self.criteria)
    test = self.study.test_metric
    lines = [f"| {leaf} | status | steps | {finals} | {_test_header(test)} | "
             "extrapolation ratio ‖z−y‖/‖Δy‖: median over steps of the "
             "per-step median over tensors [10%, 90%]; max |",
             "| --- | --- | --- |" + " --- |" * len(self.criteria)
             + " --- | --- |"]
    runs = _runs_under(self.root / "tune" / method)
    rows = []
    for run in runs:
      config = json.loads((run["dir"] / "config.json").read_text())
      value = config
      for part in key.split("."):
        value = value[part]
      rows.append((value, run))
    for value, run in sorted(rows, key=lambda r: r[0]):
      summary = run["summary"]
      finals = " | ".join(f"{self.final(run, k):.4f}" for k in self.criteria)
      lines.append(
          f"| {value:g} | {summary['status']} | {summary['steps']} | "
          f"{finals} | {_fmt([_test_value(summary, test)], 2)} | "
          f"{_ratio_summary(run['metrics'])} |")
    return lines

  def seed_groups(self, choices: dict[str, Any]) -> dict[str, list]:
    groups = {}
    for method, directories in choices.get("seed_dirs", {}).items():
      runs = []
      for relative in directories:
        summary = self.root / relative / "summary.json"
        if summary.exists():
          runs.append({"summary": json.loads(summary.read_text()),
                       "metrics": report.read_metrics(self.root / relative),
                       "dir": self.root / relative})
      groups[method] = runs
    return groups

  def results_table(self, groups: dict[str, list], criterion: str) -> list[str]:
    """Final `criterion`, steps to the baseline's final one, speed-ups."""
    by_seed = {r["summary"]["seed"]: r for r in groups.get(self.baseline, [])
               if r["summary"]["status"] == "completed"}
    test = self.study.test_metric
    lines = [f"| method | seeds | final {criterion} | {_test_header(test)} | "
             f"steps to the baseline's final {criterion} | speed-up "
             "(baseline steps / method steps), per seed | mean ± std |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, runs in groups.items():
      steps, speedups = [], []
      for run in runs:
        reference = by_seed.get(run["summary"]["seed"])
        if reference is None:
          continue
        target = self.final(reference, criterion)
        base_steps, method_steps = (
            report.first_crossing(r["metrics"], criterion, target,
                                  self.study.final_points)
            for r in (reference, run))
        steps.append(method_steps)
        speedups.append(base_steps / method_steps
                        if math.isfinite(method_steps) else math.nan)
      per_seed = ", ".join("not reached" if math.isnan(s) else f"{s:.2f}x"
                           for s in speedups) or "n/a"
      lines.append(
          f"| {self.labels.get(method, method)} | {len(runs)} | "
          f"{_fmt([self.final(r, criterion) for r in runs], 4)} | "
          f"{_fmt([_test_value(r['summary'], test) for r in runs], 2)} | "
          f"{_fmt(steps, 0)} | {per_seed} | {_fmt(speedups, 2)} |")
    return lines


def _machines(runs: Sequence[dict[str, Any]]) -> str:
  """Each machine named in the runs' summaries, with how many runs it trained."""
  counts = collections.Counter(r["summary"].get("machine", "not recorded")
                               for r in runs)
  return "; ".join(f"{name} ({count} runs)" for name, count in counts.items())


def _copy_artifacts(root: pathlib.Path, out: pathlib.Path) -> int:
  """Copies each run's config, metrics and summary (not its checkpoints)."""
  count = 0
  for summary in sorted(root.rglob("summary.json")):
    if out in summary.parents:
      continue
    target = out / "runs" / summary.parent.relative_to(root)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
      source = summary.parent / name
      if source.exists():
        (target / name).write_bytes(source.read_bytes())
    count += 1
  return count


def write_report(study: Study, root: pathlib.Path,
                 out: pathlib.Path) -> str:
  """Writes `out/report.md`, `out/<study>.png` and the runs' artifacts.

  Returns:
    The Markdown text.
  """
  from experiments import train

  root, out = pathlib.Path(root), pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  choices = StudyRunner(study, root, dry_run=True, log=lambda _: None).execute()
  reporter = _Reporter(study, root)
  name, label, _ = study.baseline
  runs = [r for r in report.load_runs(root)
          if "report" not in r["dir"].relative_to(root).parts]
  finished = sorted(r["summary"].get("finished_at", "") for r in runs)
  finished = [f for f in finished if f]
  lines = [f"# Study {study.name}", "", study.description, "",
           f"Command: `python -m experiments.main study --study {study.name}`"
           " (resumable: run it again to continue).", "",
           f"Report written on: {train.machine()}. Runs finished between "
           f"{finished[0] if finished else 'n/a'} and "
           f"{finished[-1] if finished else 'n/a'}, trained on: "
           f"{_machines(runs)}.", "",
           f"Criterion: `{study.criterion}`, final value = mean of the last "
           f"{study.final_points} measurements.", "",
           f"## Stage 1: {label}, {study.baseline_key} (seed "
           f"{study.tuning_seed})", ""]
  lines += reporter.tuning_table(name, study.baseline_key)
  best = choices["baseline"]
  lines += ["", f"Best: {best if best is not None else 'pending'}.", ""]
  for variant in study.variants:
    lines += [f"## Stage 2: {variant.label}, {variant.tuned_key}", ""]
    lines += reporter.tuning_table(variant.name, variant.tuned_key)
    value = choices["variants"].get(variant.name)
    lines += ["", f"Best: {value if value is not None else 'pending'}.", ""]
  groups = reporter.seed_groups(choices)
  lines += ["## Stage 3: the best settings over seeds", ""]
  if groups:
    for criterion in reporter.criteria:
      lines += reporter.results_table(groups, criterion) + [""]
    figure = out / f"{study.name}.png"
    report.plot_comparison(
        {reporter.labels.get(m, m): runs for m, runs in groups.items()},
        figure, reporter.criteria)
    lines += ["", f"![{study.name}]({figure.name})", ""]
  else:
    lines += ["Pending: the tuning stages are not finished.", ""]
  count = _copy_artifacts(root, out)
  lines += [f"{count} runs' config.json, metrics.jsonl and summary.json are "
            "in `runs/`.", ""]
  text = "\n".join(lines)
  (out / "report.md").write_text(text)
  return text
