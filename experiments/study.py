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

Every run is an ordinary trainer run directory (`experiments.runs`):
completed runs are skipped, interrupted ones resume from their newest
checkpoint, and every choice is a function of completed runs' results. So a
stopped study, started again with the same command, continues exactly where
it stopped and ends with the same results as an uninterrupted one.

The final value of the criterion is the mean of its last `final_points`
measurements (e.g. the last three epochs), less noisy than the last one; the
steps to reach a target are counted on the same trailing mean. The report
is `experiments.study_report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from experiments import report
from experiments import runs
from experiments.configs import overrides as overrides_lib



@dataclasses.dataclass(frozen=True)
class Variant:
  """An extrapolated method of the study and its tuned factor.

  Attributes:
    name: the run name, e.g. "extrap_sgd_trust_ratio".
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
    compared_with: the study of the same methods at another setting whose
      effect this one's is set against (e.g. "fig1_cpu" for K = 8 against
      K = 32): the report gives the change in the paired final-criterion
      difference, with Welch's interval over the two studies' seeds.
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
  compared_with: str = ""


class BudgetExhausted(Exception):
  """The invocation's step budget ran out; run the command again to go on."""


def _tag(key: str, value: float) -> str:
  return f"{key.split('.')[-1]}={value:g}"


# A run with one of these statuses is done; the study does not train it again.
FINISHED = ("completed", "diverged")


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
        `experiments.runs.train`.
      log: where progress lines go.
    """
    self.study = study
    self.root = pathlib.Path(root)
    self.budget = max_steps
    self.dry_run = dry_run
    self.train_fn = train_fn or runs.train
    self.log = log
    self.planned: list[tuple[str, pathlib.Path]] = []

  # Runs.

  def _config(self, name: str, column: str, overrides: dict[str, Any],
              seed: int) -> ml_collections.ConfigDict:
    config = overrides_lib.apply(self.study.base, overrides)
    config.name = name
    config.column = column
    config.seed = seed
    return config

  def run(self, label: str, config: ml_collections.ConfigDict,
          directory: pathlib.Path) -> list[dict[str, Any]] | None:
    """Trains, resumes or skips one run; its records (None: not done)."""
    _check_same_config(config, directory)
    if runs.finished_summary(directory, FINISHED):
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
    if summary["status"] not in FINISHED:
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
            grid: Sequence[float], max_extensions: int,
            under: pathlib.Path) -> float | None:
    """`key` over `grid` at the tuning seed, extended until its best is inside.

    Each run is `under/<key>=<value>/seed<k>`.

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
        directory = under / _tag(key, value) / f"seed{seed}"
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
                      study.max_extensions, self.root / "tune" / name)

  def tune_variant(self, variant: Variant,
                   baseline_value: float) -> float | None:
    """Stage 2: c at the baseline's best value, over a grid extended until
    its best is inside."""
    study = self.study
    return self._tune(
        variant.name, {**variant.overrides, study.baseline_key: baseline_value},
        variant.tuned_key, variant.grid, study.max_extensions,
        self.variant_root(variant, baseline_value))

  def variant_root(self, variant: Variant, baseline_value: float) -> pathlib.Path:
    """Where a variant's tuning runs at the baseline's `baseline_value` live.

    The baseline's value is part of the path: when a grid extension changes
    the baseline's best, the variant is tuned again beside its old runs.
    """
    return (self.root / "tune" / variant.name
            / _tag(self.study.baseline_key, baseline_value))

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
  # Saved before methods had their own fields: compared without the others.
  saved = _flatten(overrides_lib.load(path).to_dict())
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
