"""Statistics of a reproduction study: spreads, intervals, crossings, speed-ups.

Pure functions of numbers (no files), so that every figure a study report
states has one definition, written here, and a test against hand-computed
values.

- Spread and intervals over seeds: `sample_sd` (ddof = 1), `t_interval`
  (Student-t interval of the mean), `paired_differences` and
  `paired_interval` (seed-matched differences between two methods).
- When a curve reaches a target: `first_crossing_step` ("first_evaluation"
  or "interpolated") and `report_crossing_step` (the trailing-mean,
  interpolated crossing that `experiments/report.py` computed up to issue
  24); `CROSSING_DEFINITIONS` words each one for a report.
- Speed-ups: `speedups` (a method against the baseline, seed by seed) and
  `aa_noise_floor` (a method against itself over pairs of seeds: the
  spread a real speed-up must exceed).
- Comparing two studies: `welch_interval` (the difference of two means
  over independent seeds, e.g. an effect at K = 32 against the same effect
  at K = 8).

What an interval or one observed difference supports, in words, is in
`experiments/verdicts.py`.

A curve is a pair `(steps, values)` of equal-length sequences, the steps
increasing, as a run's `metrics.jsonl` records one criterion (lower is
better).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats

Curve = tuple[Sequence[float], Sequence[float]]
CrossingDefinition = Literal["first_evaluation", "interpolated",
                             "trailing_mean_interpolated"]

# How a report states each crossing definition; `{window}` is the trailing
# mean's number of measurements.
CROSSING_DEFINITIONS: dict[str, str] = {
    "first_evaluation": (
        "the first evaluated step whose value is at or below the target (no "
        "interpolation, so a multiple of the evaluation interval)"),
    "interpolated": (
        "the step where the straight line between the last evaluation above "
        "the target and the first at or below it meets the target"),
    "trailing_mean_interpolated": (
        "the step where the trailing mean over {window} measurements (the "
        "mean of a measurement and the {window} − 1 before it) reaches the "
        "target, interpolated linearly between the two evaluations around "
        "it"),
}
# report.py compares the trailing mean with `target + REPORT_TOLERANCE`: the
# baseline's target is its own final value (np.mean of the last `window`
# values) while the curve's last point is the same mean computed by cumulative
# sums, equal up to rounding, so that the baseline always reaches its target.
REPORT_TOLERANCE = 1e-12


class Interval(NamedTuple):
  """An estimate and its confidence interval."""
  mean: float
  low: float
  high: float


def _finite_array(values: Sequence[float], name: str,
                  minimum: int) -> np.ndarray:
  array = np.asarray(list(values), dtype=float)
  if array.ndim != 1:
    raise ValueError(f"{name} must be a flat sequence of numbers; got shape "
                     f"{array.shape}.")
  if len(array) < minimum:
    raise ValueError(
        f"{name} needs at least {minimum} values (one per seed); got "
        f"{len(array)}. Run more seeds, or report the value without a "
        "spread.")
  if not np.all(np.isfinite(array)):
    raise ValueError(
        f"{name} contains non-finite values ({array.tolist()}); leave out "
        "the seeds that did not reach the target or diverged, and report how "
        "many.")
  return array


def check_confidence(confidence: float) -> None:
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got "
                     f"{confidence}.")


def sample_sd(values: Sequence[float]) -> float:
  r"""The sample standard deviation (ddof = 1).

  .. math:: s = \sqrt{\tfrac{1}{n - 1} \sum_{i=1}^n (x_i - \bar x)^2}

  the unbiased-variance estimate of the spread between seeds, not the
  population SD (ddof = 0) of the values at hand.

  Raises:
    ValueError: fewer than 2 values, or a non-finite one.
  """
  return float(np.std(_finite_array(values, "values", 2), ddof=1))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
  r"""The Student-t confidence interval of the mean of `values`.

  .. math:: \bar x \pm t_{(1 + \text{confidence})/2,\; n - 1}\, s / \sqrt{n}

  with `s` the sample SD (`sample_sd`) and `t` the quantile of Student's t
  with n − 1 degrees of freedom (e.g. t = 4.303 for n = 3, 2.776 for n = 5 at
  95%). It assumes the values are independent draws of a normal variable
  (one per seed).

  Raises:
    ValueError: fewer than 2 values, a non-finite one, or a confidence
      outside (0, 1).
  """
  check_confidence(confidence)
  array = _finite_array(values, "values", 2)
  mean = float(np.mean(array))
  quantile = float(stats.t.ppf((1 + confidence) / 2, df=len(array) - 1))
  half_width = quantile * sample_sd(array) / math.sqrt(len(array))
  return Interval(mean, mean - half_width, mean + half_width)


def paired_differences(a_by_seed: Mapping[int, float],
                       b_by_seed: Mapping[int, float]) -> dict[int, float]:
  """`a − b` seed by seed, for the seeds present in both (sorted by seed).

  A seed that only one side ran is left out: pairing by seed removes the
  part of the seed-to-seed spread the two methods share (the same
  initialization and data order), which an unpaired seed cannot.
  """
  return {seed: float(a_by_seed[seed]) - float(b_by_seed[seed])
          for seed in sorted(set(a_by_seed) & set(b_by_seed))}


def paired_interval(a_by_seed: Mapping[int, float],
                    b_by_seed: Mapping[int, float],
                    confidence: float = 0.95) -> Interval:
  """The t-interval (`t_interval`) of the mean paired difference `a − b`.

  This is the interval of the paired t-test: n = the number of seeds both
  sides ran, df = n − 1.

  Raises:
    ValueError: fewer than 2 seeds in common (or a non-finite difference).
  """
  differences = paired_differences(a_by_seed, b_by_seed)
  if len(differences) < 2:
    raise ValueError(
        f"paired_interval needs at least 2 seeds run by both sides; seeds "
        f"{sorted(a_by_seed)} and {sorted(b_by_seed)} have "
        f"{len(differences)} in common.")
  return t_interval(list(differences.values()), confidence)


def welch_interval(a: Sequence[float], b: Sequence[float],
                   confidence: float = 0.95) -> Interval:
  r"""Welch's t-interval of mean(a) − mean(b), over independent samples.

  .. math:: \bar a - \bar b \pm t_{(1 + \text{confidence})/2,\; \nu}
            \sqrt{s_a^2/n_a + s_b^2/n_b},\qquad
            \nu = \frac{(s_a^2/n_a + s_b^2/n_b)^2}
                   {(s_a^2/n_a)^2/(n_a - 1) + (s_b^2/n_b)^2/(n_b - 1)}

  with sample SDs (`sample_sd`) and the Welch-Satterthwaite degrees of
  freedom ν, which do not assume equal spreads. For an effect measured in
  two studies on different seeds (e.g. the paired final-loss difference at
  K = 32 against the one at K = 8): whether the effect changed.

  Raises:
    ValueError: fewer than 2 values on a side, a non-finite one, a
      confidence outside (0, 1), or both sides without spread.
  """
  check_confidence(confidence)
  a = _finite_array(a, "a", 2)
  b = _finite_array(b, "b", 2)
  var_a, var_b = (sample_sd(x) ** 2 / len(x) for x in (a, b))
  if var_a + var_b == 0:
    raise ValueError("welch_interval needs some spread: both samples are "
                     "constant, so the interval is undefined.")
  df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1)
                               + var_b ** 2 / (len(b) - 1))
  mean = float(np.mean(a) - np.mean(b))
  half_width = (float(stats.t.ppf((1 + confidence) / 2, df))
                * math.sqrt(var_a + var_b))
  return Interval(mean, mean - half_width, mean + half_width)


def _curve_arrays(steps: Sequence[float],
                  values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  steps_array = np.asarray(list(steps), dtype=float)
  values_array = np.asarray(list(values), dtype=float)
  if steps_array.shape != values_array.shape or steps_array.ndim != 1:
    raise ValueError(
        f"steps and values must be flat and of equal length; got shapes "
        f"{steps_array.shape} and {values_array.shape}.")
  if np.any(np.diff(steps_array) <= 0):
    raise ValueError(f"steps must increase strictly; got "
                     f"{steps_array.tolist()}.")
  return steps_array, values_array


def first_crossing_step(
    steps: Sequence[float], values: Sequence[float], target: float,
    definition: Literal["first_evaluation", "interpolated"],
    tolerance: float = 0.0) -> float:
  r"""When the curve first reaches `target` or below (nan: never).

  With i the first evaluation whose value v_i <= target + tolerance:

  - "first_evaluation": the evaluated step s_i itself, no interpolation.
  - "interpolated": the step where the straight line through the last
    evaluation above the target, (s_{i−1}, v_{i−1}), and (s_i, v_i) meets
    the target,

    .. math:: s_{i-1} + \frac{v_{i-1} - \text{target}}{v_{i-1} - v_i}
              (s_i - s_{i-1}),

    or s_0 when the first evaluation is already at or below it.

  Args:
    steps: the evaluated steps, increasing.
    values: the criterion at each step (lower is better).
    target: the value to reach.
    definition: "first_evaluation" or "interpolated", as above.
    tolerance: added to the target in the comparison only (0: exact).

  Raises:
    ValueError: unequal lengths, steps not increasing, an unknown definition.
  """
  if definition not in ("first_evaluation", "interpolated"):
    raise ValueError(f"definition must be 'first_evaluation' or "
                     f"'interpolated'; got {definition!r}.")
  steps_array, values_array = _curve_arrays(steps, values)
  reached = np.nonzero(values_array <= target + tolerance)[0]
  if not len(reached):
    return math.nan
  i = int(reached[0])
  if definition == "first_evaluation" or i == 0:
    return float(steps_array[i])
  step0, value0 = steps_array[i - 1], values_array[i - 1]
  step1, value1 = steps_array[i], values_array[i]
  return float(step0 + (value0 - target) / (value0 - value1) * (step1 - step0))


def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
  """Each value averaged with up to `window − 1` values before it.

  Computed by differences of cumulative sums, as `experiments/report.py`
  does, so that crossings on it reproduce that module's to the last bit.
  """
  if window < 1:
    raise ValueError(f"window must be a positive number of measurements; "
                     f"got {window}.")
  array = np.asarray(list(values), dtype=float)
  cumulative = np.cumsum(np.insert(array, 0, 0.0))
  ends = np.arange(1, len(array) + 1)
  starts = np.maximum(ends - window, 0)
  return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def report_crossing_step(steps: Sequence[float], values: Sequence[float],
                         target: float, window: int) -> float:
  """The crossing `report.py:first_crossing` computed up to issue 24.

  The "interpolated" crossing (`first_crossing_step`) of the trailing mean
  over `window` measurements (`trailing_mean`), compared with
  `target + REPORT_TOLERANCE`; the study used window = its `final_points`.
  So it is neither the first evaluated step nor a raw value's crossing: a
  step between two evaluations at which the mean of the last `window`
  measurements reaches the target.
  """
  return first_crossing_step(steps, trailing_mean(values, window), target,
                             "interpolated", tolerance=REPORT_TOLERANCE)


def final_value(values: Sequence[float], points: int) -> float:
  """The mean of the last `points` values: a run's final criterion value."""
  if points < 1:
    raise ValueError(f"points must be a positive number of measurements; got "
                     f"{points}.")
  array = np.asarray(list(values), dtype=float)
  if not len(array):
    raise ValueError("values is empty: the run measured nothing.")
  return float(np.mean(array[-points:]))


def crossing(curve: Curve, target: float, definition: CrossingDefinition,
             window: int) -> float:
  """`curve`'s crossing of `target` by `definition` (`CROSSING_DEFINITIONS`).

  `window` is used by "trailing_mean_interpolated" only.
  """
  steps, values = curve
  if definition == "trailing_mean_interpolated":
    return report_crossing_step(steps, values, target, window)
  return first_crossing_step(steps, values, target, definition)


def _speedup(reference: Curve, other: Curve, final_points: int,
             definition: CrossingDefinition) -> tuple[float, float]:
  """(speed-up, its upper bound): (nan, bound) when `other` never reaches."""
  target = final_value(reference[1], final_points)
  if not math.isfinite(target):
    raise ValueError(f"the reference run's final value is {target} (it "
                     "diverged); a speed-up to it is undefined.")
  reference_steps = crossing(reference, target, definition, final_points)
  if not math.isfinite(reference_steps):
    # With "first_evaluation" or "interpolated" on raw values a curve
    # always reaches the mean of its own last values; rounding aside, so
    # does the trailing mean.
    raise ValueError(
        f"the reference run never reaches its own final value {target} by "
        f"{definition!r}; use 'trailing_mean_interpolated' with the same "
        "window, or a definition on raw values.")
  other_steps = crossing(other, target, definition, final_points)
  if not math.isfinite(other_steps):
    # Not reached by its last step: it would have needed more steps.
    return math.nan, reference_steps / float(other[0][-1])
  return reference_steps / other_steps, reference_steps / other_steps


@dataclasses.dataclass(frozen=True)
class SpeedUps:
  """Speed-ups by seed; nan marks a seed whose run never reached the target.

  Attributes:
    by_seed: seed -> speed-up (nan: "not reached").
    upper_bounds: seed -> the speed-up itself where reached; where not, the
      largest it could be had the run reached the target just after its
      last step (baseline's steps / the run's last step). Their mean and
      interval bound the speed-up over all seeds from above.
  """
  by_seed: dict[int, float]
  upper_bounds: dict[int, float]

  @property
  def reached(self) -> dict[int, float]:
    """The seeds that reached the target: what means and intervals use."""
    return {s: v for s, v in self.by_seed.items() if not math.isnan(v)}

  @property
  def not_reached(self) -> tuple[int, ...]:
    """The seeds that never reached it: counted, never averaged."""
    return tuple(s for s, v in self.by_seed.items() if math.isnan(v))


def speedups(baseline_runs: Mapping[int, Curve],
             method_runs: Mapping[int, Curve], final_points: int,
             definition: CrossingDefinition) -> SpeedUps:
  r"""The method's speed-up over the baseline, seed by seed.

  For each seed both ran: the target is the baseline's own final value (the
  mean of its last `final_points` values, `final_value`), and

  .. math:: \text{speed-up} = \frac{\text{baseline's steps to the target}}
                                   {\text{method's steps to the target}}

  with steps counted by the crossing `definition` (`CROSSING_DEFINITIONS`;
  "trailing_mean_interpolated" uses a window of `final_points`). > 1 means
  the method got there sooner.

  A method run that never reaches the target gets nan ("not reached"): it is
  left out of the mean and the interval and must be reported as a count
  (`SpeedUps.not_reached`), since the mean over the seeds that reached is
  biased upwards. `SpeedUps.upper_bounds` counts it at the largest speed-up
  it could have (baseline's steps / its last step), so their mean bounds
  the speed-up over every seed from above. Seeds only one side ran are left
  out.

  Raises:
    ValueError: a baseline run that diverged (non-finite final value) or
      never reaches its own final value.
  """
  pairs = {seed: _speedup(baseline_runs[seed], method_runs[seed],
                          final_points, definition)
           for seed in sorted(set(baseline_runs) & set(method_runs))}
  return SpeedUps({seed: value for seed, (value, _) in pairs.items()},
                  {seed: bound for seed, (_, bound) in pairs.items()})


@dataclasses.dataclass(frozen=True)
class NoiseFloor:
  """The A/A noise floor of one method (see `aa_noise_floor`).

  Attributes:
    by_pair: (i, j) -> seed j's "speed-up" against seed i (nan: seed j never
      reached seed i's final value).
    median, minimum, maximum: over the pairs that reached it.
    low, high: their 2.5th and 97.5th percentiles (NumPy's linear
      interpolation between order statistics).
  """
  by_pair: dict[tuple[int, int], float]
  median: float
  minimum: float
  maximum: float
  low: float
  high: float

  @property
  def not_reached(self) -> tuple[tuple[int, int], ...]:
    return tuple(p for p, v in self.by_pair.items() if math.isnan(v))


def aa_noise_floor(runs_by_seed: Mapping[int, Curve], final_points: int,
                   definition: CrossingDefinition) -> NoiseFloor:
  """One method against itself over seeds: the speed-ups noise alone gives.

  For every ordered pair (i, j) of distinct seeds, seed j's "speed-up"
  against seed i by the rule of `speedups` (seed i's steps to its own final
  value over seed j's steps to that value). Nothing but the seed differs,
  so the spread of these values is what a speed-up between two methods
  measured on one seed pair can show without any real effect; a method's
  speed-up is credible when it lies beyond this floor (above `high`).

  The n(n − 1) pairs are not independent draws (each seed appears in
  2(n − 1) of them), so the summary describes them and is no interval.
  A seed that ends above seed i's final value often never reaches it (on the
  trailing mean, whose last point is seed j's own final value, it reaches it
  only by dipping below earlier): then about half the pairs are "not
  reached", and the reached ones are mostly those where seed j ended lower,
  above 1 by that selection alone, as is a method that ends lower than the
  baseline. State the not-reached counts next to the floor.

  Raises:
    ValueError: fewer than 2 seeds; a run that never reaches its own final
      value; no pair reaching the target.
  """
  if len(runs_by_seed) < 2:
    raise ValueError(f"aa_noise_floor needs at least 2 seeds of the method; "
                     f"got {sorted(runs_by_seed)}.")
  by_pair = {
      (i, j): _speedup(runs_by_seed[i], runs_by_seed[j], final_points,
                       definition)[0]
      for i, j in itertools.permutations(sorted(runs_by_seed), 2)}
  reached = np.asarray([v for v in by_pair.values() if not math.isnan(v)])
  if not len(reached):
    raise ValueError("no seed reached another seed's final value; the A/A "
                     "floor is undefined.")
  low, high = np.percentile(reached, [2.5, 97.5])
  return NoiseFloor(by_pair, float(np.median(reached)), float(reached.min()),
                    float(reached.max()), float(low), float(high))
