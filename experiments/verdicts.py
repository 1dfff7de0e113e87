"""What the numbers support, in words: the sentences a study report prints.

- `claim_sentence`: what a confidence interval supports about a speed-up or
  a difference ("faster", "lower", or "not distinguishable from 1").
- `noise_verdict`: whether one observed difference (one seed of each method,
  as the main job runs) lies within the seed-to-seed spread a study measured.

The numbers themselves come from `experiments/statistics.py`.
"""

from __future__ import annotations

import math

from experiments import statistics
from experiments.statistics import Interval


def claim_sentence(name: str, interval: Interval, null: float = 1.0,
                   unit: str = "x", *, above: str = "faster than the baseline",
                   below: str = "slower than the baseline",
                   confidence: float = 0.95, digits: int = 2) -> str:
  """The sentence a confidence interval supports about `name`.

  "above" when the whole interval lies above `null`, "below" when it lies
  below, else "not distinguishable from {null}" (the interval contains it;
  an interval touching `null` at an end counts as containing it). The bounds
  get more than `digits` digits (up to 6) where fewer would print a bound
  that is not the null as the null.

  Examples:
    a speed-up (null 1): "EXTRAP-ADAM: 1.19x, 95% CI [1.03, 1.34]: faster
    than the baseline."; a paired final-loss difference method − baseline:
    `claim_sentence(name, interval, null=0.0, unit="", above="higher final
    loss than the baseline", below="lower final loss than the baseline",
    digits=4)`.
  """
  statistics.check_confidence(confidence)
  if not interval.low <= interval.mean <= interval.high:
    raise ValueError(f"interval must satisfy low <= mean <= high; got "
                     f"{interval}.")
  level = f"{100 * confidence:g}% CI"
  # A bound that rounds to the null but is not it gets more digits, so that
  # the printed interval shows on which side it lies (0.9998, not 1.00).
  bound_digits = digits
  while bound_digits < 6 and any(
      bound != null and round(bound, bound_digits) == null
      for bound in (interval.low, interval.high)):
    bound_digits += 1
  bounds = (f"[{interval.low:.{bound_digits}f}, "
            f"{interval.high:.{bound_digits}f}]")
  estimate = f"{name}: {interval.mean:.{digits}f}{unit}"
  if interval.low > null:
    return f"{estimate}, {level} {bounds}: {above}."
  if interval.high < null:
    return f"{estimate}, {level} {bounds}: {below}."
  return (f"{estimate}: not distinguishable from {null:g} ({level} {bounds} "
          f"contains {null:g}).")


def noise_verdict(difference: float, seed_sd: float, *, seeds: int,
                  multiple: float = 2.0,
                  what: str = "the final-loss difference",
                  multiple_name: str = "") -> str:
  """Whether one observed difference lies within the seed-to-seed spread.

  A single run of each method (one seed each, as the main job) gives one
  difference d. The study measured, at the same setting, `seed_sd`: the
  sample SD (`sample_sd`) over `seeds` seeds of the paired differences
  between the same two methods. d is "within the noise" when
  |d| <= multiple · seed_sd (about a 95% band for a normal spread at
  multiple = 2), else "beyond the noise" (which, from one seed, suggests but
  does not establish a difference). `multiple_name`, if given, says where
  the multiple comes from (e.g. a prediction interval's factor).

  Raises:
    ValueError: a non-finite difference, a negative or non-finite SD,
      fewer than 2 seeds, a non-positive multiple.
  """
  if not math.isfinite(difference):
    raise ValueError(f"difference must be finite; got {difference}.")
  if not (math.isfinite(seed_sd) and seed_sd >= 0):
    raise ValueError(f"seed_sd must be a finite SD >= 0; got {seed_sd}.")
  if seeds < 2:
    raise ValueError(f"seeds must be >= 2 (a sample SD needs two); got "
                     f"{seeds}.")
  if multiple <= 0:
    raise ValueError(f"multiple must be > 0, e.g. 2; got {multiple}.")
  bound = multiple * seed_sd
  factor = (f"{multiple_name} = {multiple:.3g}" if multiple_name
            else f"{multiple:.3g}")
  numbers = (f"{what[:1].upper()}{what[1:]}: {difference:+.4f} observed; "
             f"the study's seed-to-seed sample SD of it ({seeds} seeds): "
             f"{seed_sd:.4f}; {factor} SD = {bound:.4f}.")
  if abs(difference) <= bound:
    return (f"{numbers} |{abs(difference):.4f}| <= {bound:.4f}: within the "
            "noise.")
  return (f"{numbers} |{abs(difference):.4f}| > {bound:.4f}: beyond the noise "
          "(from one seed each: a hint, not an established difference).")
