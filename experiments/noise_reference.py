"""Whether a one-seed comparison lies within a study's seed-to-seed noise.

The main job trains each method once, for a few epochs. Its difference in the
final loss of the shared point is only evidence if it exceeds what another
seed alone gives: `compare_with_study` measures that spread from a study's
comparison seeds trained at the same setting, cut at the same step, and says
"within the noise" when the one-seed difference lies inside the 95%
prediction interval of one more seed's difference under no effect,
±t_{0.975, n−1}·sqrt(1 + 1/n) sample SDs of the study's paired differences.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import scipy.stats

from experiments import report
from experiments import statistics
from experiments import verdicts
from experiments.configs import overrides

# The parts of a run's configuration that must agree for the study's spread
# to be the spread of this setting.
SETTING_KEYS = ("optimizer", "workers", "schedule", "model", "task")


def _setting(run: dict[str, Any]) -> dict[str, Any]:
  # As a rerun reads it: configurations saved before each method had its
  # own fields carry every method's, which the method never read.
  config = overrides.load(run["dir"] / "config.json").to_dict()
  return {key: config.get(key) for key in SETTING_KEYS}


def _final_at(records: list[dict[str, Any]], key: str, step: int,
              points: int) -> float:
  return report.final_value([r for r in records if r["step"] <= step], key,
                            points)


def compare_with_study(root: pathlib.Path, reference: pathlib.Path,
                       baseline: str, method: str,
                       key: str = report.SHARED_LOSS,
                       points: int = report.FINAL_POINTS) -> str:
  """Markdown: the runs' difference against the study's paired spread.

  Args:
    root: the main job's runs (one seed of `baseline` and of `method`).
    reference: a study's runs directory; its `seeds/<name>/seed<k>/` runs
      are the comparison seeds.
    baseline: the baseline's run name.
    method: the compared method's run name.
    key: the loss compared (lower is better).
    points: final value = mean of the last `points` measurements.

  Returns:
    The text; it says why when there is no reference at this setting.
  """
  runs = {r["summary"]["name"]: r for r in report.load_runs(root)}
  if baseline not in runs or method not in runs:
    return ""
  step = min(max(r["step"] for r in runs[name]["metrics"] if key in r)
             for name in (baseline, method))
  difference = (_final_at(runs[method]["metrics"], key, step, points)
                - _final_at(runs[baseline]["metrics"], key, step, points))
  head = (f"Final {key} at step {step}, {method} − {baseline}: "
          f"{difference:+.4f} (one seed each).")
  seeds_dir = pathlib.Path(reference) / "seeds"
  study = {name: [r for r in report.load_runs(seeds_dir / name)
                  if r["summary"]["status"] == "completed"]
           if (seeds_dir / name).is_dir() else []
           for name in (baseline, method)}
  if not study[baseline] or not study[method]:
    return f"{head} No study runs under {seeds_dir} to compare it with.\n"
  for name in (baseline, method):
    if _setting(study[name][0]) != _setting(runs[name]):
      return (f"{head} The study's runs under {seeds_dir / name} were "
              "trained at another setting than this run, so their spread "
              "is not this setting's: no noise reference.\n")
  finals = {name: {r["summary"]["seed"]: _final_at(r["metrics"], key, step,
                                                   points)
                   for r in study[name]} for name in (baseline, method)}
  paired = statistics.paired_differences(finals[method], finals[baseline])
  if len(paired) < 2 or math.isnan(difference):
    return f"{head} The study has fewer than 2 paired seeds here.\n"
  spread = statistics.sample_sd(list(paired.values()))
  interval = statistics.paired_interval(finals[method], finals[baseline])
  # A 95% prediction interval for one more seed's difference: with n seeds,
  # t_{0.975, n-1}·sqrt(1 + 1/n) sample SDs (not 2, which assumes the SD is
  # known; with 2-5 seeds it is not).
  n = len(paired)
  multiple = float(scipy.stats.t.ppf(0.975, n - 1)) * math.sqrt(1 + 1 / n)
  verdict = verdicts.noise_verdict(
      difference, spread, seeds=n, multiple=multiple,
      what=f"the final {key} difference",
      multiple_name=(f"the 95% prediction bound of one more seed under no "
                     f"effect, t_{{0.975, {n - 1}}}·sqrt(1 + 1/{n})"))
  return (f"{head} In the study's {len(paired)} comparison seeds at this "
          f"setting, cut at step {step}, the paired difference was "
          f"{interval.mean:+.4f} (95% t-interval [{interval.low:+.4f}, "
          f"{interval.high:+.4f}], sample SD {spread:.4f}). {verdict}\n")
