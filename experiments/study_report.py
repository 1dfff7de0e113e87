"""The Markdown report of a study (`experiments.study`): tables, figure, artifacts.

`write_report(study, root, out)` reads the study's runs under `root` (the
choices the runner made are recomputed from them) and writes
`out/report.md`, `out/<study>.png` and each run's config, metrics and
summary under `out/runs/`. Values over seeds are shown as mean ± sample SD
(`report.format_mean_sd`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import report
from experiments import run_info
from experiments import statistics
from experiments import verdicts
from experiments.configs import studies
from experiments.study import final_score
from experiments.study import Study
from experiments.study import StudyRunner

# How steps to a target are counted (`statistics.CROSSING_DEFINITIONS`).
CROSSING = "trailing_mean_interpolated"


def _runs_under(directory: pathlib.Path) -> list[dict[str, Any]]:
  return report.load_runs(directory) if directory.is_dir() else []


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

  def tuning_table(self, method: str, key: str,
                   runs_dir: pathlib.Path | None = None) -> list[str]:
    leaf = key.split(".")[-1]
    finals = " | ".join(f"final {k}" for k in self.criteria)
    test = self.study.test_metric
    lines = [f"| {leaf} | status | steps | {finals} | {_test_header(test)} | "
             "extrapolation ratio ‖z−y‖/‖Δy‖ over steps ≥ 2 (step 1 has no "
             "offset yet): median over steps of the per-step median over "
             "tensors [10%, 90%]; max over steps of the per-step max |",
             "| --- | --- | --- |" + " --- |" * len(self.criteria)
             + " --- | --- |"]
    runs = _runs_under(runs_dir or self.root / "tune" / method)
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
          f"{finals} | {report.format_mean_sd([_test_value(summary, test)], 2)} | "
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

  def _curves(self, runs: Sequence[dict[str, Any]], criterion: str
              ) -> dict[int, statistics.Curve]:
    """seed -> (steps, values) of `criterion`, completed runs only."""
    curves = {}
    for run in runs:
      if run["summary"]["status"] != "completed":
        continue
      records = [r for r in run["metrics"] if criterion in r]
      curves[run["summary"]["seed"]] = ([r["step"] for r in records],
                                        [r[criterion] for r in records])
    return curves

  def _finals(self, runs, criterion: str) -> dict[int, float]:
    return {r["summary"]["seed"]: self.final(r, criterion) for r in runs}

  def results_table(self, groups: dict[str, list], criterion: str) -> list[str]:
    """Final `criterion`, speed-ups with their interval, paired differences."""
    study = self.study
    baseline = self._curves(groups.get(self.baseline, []), criterion)
    baseline_finals = self._finals(groups.get(self.baseline, []), criterion)
    test = study.test_metric
    lines = [f"| method | seeds | final {criterion}, mean ± sample SD | "
             f"{_test_header(test)}, mean ± sample SD | speed-up (baseline "
             f"steps / method steps to the baseline's final {criterion}), "
             "per seed | speed-up, mean [95% t-interval] | final "
             f"{criterion} − baseline's, paired by seed, mean [95% "
             "t-interval] |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    claims = []
    for method, runs in groups.items():
      label = self.labels.get(method, method)
      finals = self._finals(runs, criterion)
      row = [label, str(len(runs)),
             report.format_mean_sd(list(finals.values()), 4),
             report.format_mean_sd(
                 [_test_value(r["summary"], test) for r in runs], 2)]
      if method == self.baseline:
        lines.append("| " + " | ".join(row + ["(baseline)"] * 3) + " |")
        continue
      ups = statistics.speedups(baseline, self._curves(runs, criterion),
                                study.final_points, CROSSING)
      per_seed = ", ".join(
          "not reached" if math.isnan(v) else f"{v:.2f}x"
          for v in ups.by_seed.values()) or "n/a"
      reached = list(ups.reached.values())
      speedup = _interval_text(reached, "x")
      paired = statistics.paired_differences(finals, baseline_finals)
      difference = _interval_text(list(paired.values()), "", digits=4)
      lines.append("| " + " | ".join(row + [per_seed, speedup, difference])
                   + " |")
      if len(reached) >= 2:
        claims.append(verdicts.claim_sentence(
            f"{label}, speed-up", statistics.t_interval(reached)))
      if ups.not_reached:
        bounds = list(ups.upper_bounds.values())
        claims.append(
            f"{label}: seeds {list(ups.not_reached)} never reached the "
            "baseline's final value (not in the mean, which they would "
            "lower). Counting each at the largest speed-up it could have "
            "(baseline's steps / its last step: "
            + ", ".join(f"{ups.upper_bounds[s]:.2f}x"
                        for s in ups.not_reached)
            + f"), the mean speed-up over all {len(bounds)} seeds is at "
            "most " + _interval_text(bounds, "x")
            + " (the bounds' mean [95% t-interval]).")
      if len(paired) >= 2:
        claims.append(verdicts.claim_sentence(
            f"{label}, final {criterion} − baseline's",
            statistics.paired_interval(finals, baseline_finals), null=0.0,
            unit="", above="higher final loss than the baseline",
            below="lower final loss than the baseline", digits=4))
    lines += [""] + [f"- {claim}" for claim in claims]
    return lines

  def noise_floor_table(self, groups: dict[str, list],
                        criterion: str) -> list[str]:
    """Each method against itself over pairs of seeds (the A/A floor)."""
    lines = ["| method | seed pairs reaching the target | A/A \"speed-up\" "
             "median | [min, max] | [2.5%, 97.5%] |",
             "| --- | --- | --- | --- | --- |"]
    for method, runs in groups.items():
      curves = self._curves(runs, criterion)
      if len(curves) < 2:
        continue
      floor = statistics.aa_noise_floor(curves, self.study.final_points,
                                        CROSSING)
      pairs = len(floor.by_pair)
      reached = pairs - len(floor.not_reached)
      if reached == 0:
        lines.append(f"| {self.labels.get(method, method)} | 0 / {pairs} | "
                     "n/a | n/a | n/a |")
        continue
      lines.append(
          f"| {self.labels.get(method, method)} | {reached} / {pairs} | "
          f"{floor.median:.2f}x | [{floor.minimum:.2f}, {floor.maximum:.2f}] "
          f"| [{floor.low:.2f}, {floor.high:.2f}] |")
    return lines

  def paired_effects(self, groups: dict[str, list]
                     ) -> dict[str, dict[str, dict[int, float]]]:
    """criterion -> variant -> seed -> final value − the baseline's."""
    effects = {}
    for criterion in self.criteria:
      baseline = self._finals(groups.get(self.baseline, []), criterion)
      effects[criterion] = {
          method: statistics.paired_differences(
              self._finals(runs, criterion), baseline)
          for method, runs in groups.items() if method != self.baseline}
    return effects


def comparison_section(here: _Reporter, groups: dict[str, list],
                       other: Study, other_root: pathlib.Path) -> list[str]:
  """The effect here against `other`'s: Welch's interval of the change.

  The effect of a method is its final criterion minus the baseline's,
  paired by seed within each study; the two studies' seeds are independent
  draws, so the change (here − there) gets Welch's interval
  (`statistics.welch_interval`). `groups` are `here`'s seed runs.
  """
  lines = [f"## Against {other.name}: does the effect change?", "",
           f"Here: {here.study.base.row}. {other.name}: {other.base.row}. The "
           "effect is a method's final value minus the baseline's, paired "
           "by seed within each study (mean [95% t-interval]); the change is "
           "here − there, with Welch's 95% interval (the two studies' seeds "
           "are independent). Negative: the method gains more here.", ""]
  if not pathlib.Path(other_root).is_dir():
    return lines + [f"No runs of {other.name} under {other_root}.", ""]
  there = _Reporter(other, pathlib.Path(other_root))
  there_choices = StudyRunner(other, there.root, dry_run=True,
                              log=lambda _: None).execute()
  there_effects = there.paired_effects(there.seed_groups(there_choices))
  lines += ["| criterion | method | effect here | effect in "
            f"{other.name} | change, mean [95% Welch interval] |",
            "| --- | --- | --- | --- | --- |"]
  claims = []
  for criterion, by_method in here.paired_effects(groups).items():
    for method, effect in by_method.items():
      reference = there_effects.get(criterion, {}).get(method, {})
      label = here.labels.get(method, method)
      change = "n/a"
      if len(effect) >= 2 and len(reference) >= 2:
        interval = statistics.welch_interval(list(effect.values()),
                                             list(reference.values()))
        change = (f"{interval.mean:+.4f} [{interval.low:+.4f}, "
                  f"{interval.high:+.4f}]")
        claims.append(verdicts.claim_sentence(
            f"{label}, change in final {criterion} − baseline's", interval,
            null=0.0, unit="", digits=4,
            above=f"the method gains less here than in {other.name}",
            below=f"the method gains more here than in {other.name}"))
      lines.append(f"| {criterion} | {label} | {_seeds_text(effect)} | "
                   f"{_seeds_text(reference)} | {change} |")
  return lines + [""] + [f"- {claim}" for claim in claims] + [""]


def _interval_text(values: Sequence[float], unit: str, digits: int = 2) -> str:
  """"mean [low, high]" (95% t-interval); the value alone for one seed."""
  if not values:
    return "n/a"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}{unit} (1 seed)"
  interval = statistics.t_interval(values)
  return (f"{interval.mean:.{digits}f}{unit} [{interval.low:.{digits}f}, "
          f"{interval.high:.{digits}f}]")


def _seeds_text(by_seed: dict[int, float]) -> str:
  """`_interval_text` of the values, with the number of seeds."""
  text = _interval_text(list(by_seed.values()), "", digits=4)
  return text if len(by_seed) == 1 else f"{text} ({len(by_seed)} seeds)"


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


def write_report(study: Study, root: pathlib.Path, out: pathlib.Path,
                 compared_root: pathlib.Path | None = None) -> str:
  """Writes `out/report.md`, `out/<study>.png` and the runs' artifacts.

  Args:
    study: the study.
    root: its runs.
    out: where the report goes.
    compared_root: the runs of `study.compared_with`, if it names a study
      (without them the report says where it looked).

  Returns:
    The Markdown text.
  """
  root, out = pathlib.Path(root), pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  runner = StudyRunner(study, root, dry_run=True, log=lambda _: None)
  choices = runner.execute()
  reporter = _Reporter(study, root)
  name, label, _ = study.baseline
  runs = [r for r in report.load_runs(root)
          if "report" not in r["dir"].relative_to(root).parts]
  finished = sorted(r["summary"].get("finished_at", "") for r in runs)
  finished = [f for f in finished if f]
  lines = [f"# Study {study.name}", "", study.description, "",
           f"Command: `python -m experiments.main study --study {study.name}`"
           " (resumable: run it again to continue).", "",
           f"Report written on: {run_info.machine()}. Runs finished between "
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
    lines += [f"## Stage 2: {variant.label}, {variant.tuned_key}"
              + (f" at {study.baseline_key} = {best:g}" if best is not None
                 else ""), ""]
    if best is not None:
      lines += reporter.tuning_table(variant.name, variant.tuned_key,
                                     runner.variant_root(variant, best))
    value = choices["variants"].get(variant.name)
    lines += ["", f"Best: {value if value is not None else 'pending'}.", ""]
  groups = reporter.seed_groups(choices)
  lines += ["## Stage 3: the best settings over seeds", ""]
  if groups:
    lines += [
        f"Comparison seeds {list(study.seeds)} (the tuning seed "
        f"{study.tuning_seed} excluded: its runs won a selection). Spreads "
        "are sample SDs (n − 1); intervals are 95% Student-t intervals over "
        "seeds (df = n − 1); differences are paired by seed. Steps to a "
        "target: " + statistics.CROSSING_DEFINITIONS[CROSSING].format(
            window=study.final_points) + ".", ""]
    for criterion in reporter.criteria:
      lines += [f"### {criterion}", ""]
      lines += reporter.results_table(groups, criterion) + [""]
      lines += ["The seed-to-seed noise floor: each method's \"speed-up\" "
                "against itself, seed j against seed i for every ordered pair "
                "of its comparison seeds, by the same rule. A speed-up inside "
                "this range is what another seed alone gives.", ""]
      lines += reporter.noise_floor_table(groups, criterion) + [""]
    figure = out / f"{study.name}.png"
    report.plot_comparison(
        {reporter.labels.get(m, m): runs for m, runs in groups.items()},
        figure, reporter.criteria)
    lines += ["", f"![{study.name}]({figure.name})", ""]
  else:
    lines += ["Pending: the tuning stages are not finished.", ""]
  if groups and study.compared_with:
    lines += comparison_section(
        reporter, groups, studies.get_study(study.compared_with),
        compared_root or root.parent / f"study-{study.compared_with}")
  count = _copy_artifacts(root, out)
  lines += [f"{count} runs' config.json, metrics.jsonl and summary.json are "
            "in `runs/`.", ""]
  text = "\n".join(lines)
  (out / "report.md").write_text(text)
  return text
