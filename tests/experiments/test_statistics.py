"""The study's statistics against hand-computed values and SciPy."""

import math
import statistics as python_statistics

import numpy as np
import pytest
import scipy.stats

from experiments import statistics

# t_{0.975, 2}, from a printed table of Student's t.
T_975_DF2 = 4.3027
STEPS = [10, 20, 30, 40]


def test_sample_sd_is_ddof_1():
  # sqrt(((1.5² + 0.5²) · 2) / 3) = sqrt(5/3).
  assert statistics.sample_sd([1, 2, 3, 4]) == pytest.approx(1.2910, abs=1e-4)
  assert statistics.sample_sd([1, 2, 3, 4]) == pytest.approx(
      python_statistics.stdev([1, 2, 3, 4]), rel=1e-12)


@pytest.mark.parametrize(("values", "message"), [
    ([1.0], "at least 2 values"),
    ([1.0, math.inf], "non-finite"),
    ([1.0, math.nan], "non-finite"),
])
def test_sample_sd_rejects_what_has_no_spread(values, message):
  with pytest.raises(ValueError, match=message):
    statistics.sample_sd(values)


def test_t_interval_by_hand_and_scipy():
  # Mean 2, sample SD 1: 2 ± 4.3027 / sqrt(3) = 2 ± 2.4842.
  mean, low, high = statistics.t_interval([1, 2, 3])
  assert mean == 2
  assert low == pytest.approx(2 - T_975_DF2 / math.sqrt(3), abs=1e-4)
  assert high == pytest.approx(2 + T_975_DF2 / math.sqrt(3), abs=1e-4)
  assert (round(low, 3), round(high, 3)) == (-0.484, 4.484)
  values = [1.3, 0.7, 1.9, 1.1, 1.0]
  reference = scipy.stats.ttest_1samp(values, 0.0).confidence_interval(0.9)
  _, low, high = statistics.t_interval(values, confidence=0.9)
  assert (low, high) == pytest.approx((reference.low, reference.high),
                                      rel=1e-12)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95])
def test_t_interval_rejects_a_confidence_outside_0_1(confidence):
  with pytest.raises(ValueError, match="confidence must lie in"):
    statistics.t_interval([1, 2, 3], confidence)


def test_paired_differences_keep_the_seeds_both_sides_ran():
  method = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}
  baseline = {4: 7.0, 2: 2.5, 1: 1.0, 0: 0.5}
  assert statistics.paired_differences(method, baseline) == {
      0: 0.5, 1: 1.0, 2: 1.5}
  # Differences 0.5, 1, 1.5: mean 1, sample SD 0.5: 1 ± 4.3027 · 0.5 / √3.
  mean, low, high = statistics.paired_interval(method, baseline)
  assert mean == 1
  assert (low, high) == pytest.approx(
      (1 - T_975_DF2 * 0.5 / math.sqrt(3), 1 + T_975_DF2 * 0.5 / math.sqrt(3)),
      abs=1e-4)
  reference = scipy.stats.ttest_rel([1.0, 2.0, 4.0],
                                    [0.5, 1.0, 2.5]).confidence_interval()
  assert (low, high) == pytest.approx((reference.low, reference.high),
                                      rel=1e-12)


def test_paired_interval_needs_two_common_seeds():
  with pytest.raises(ValueError, match="1 in common"):
    statistics.paired_interval({0: 1.0, 1: 2.0}, {1: 1.0, 2: 3.0})


@pytest.mark.parametrize(("target", "first_evaluation", "interpolated"), [
    # First at or below 1.5: 1.0 at step 30; the line from (20, 2) to
    # (30, 1) meets 1.5 at step 25.
    (1.5, 30, 25),
    # Reached exactly at an evaluation: both give that step.
    (2.0, 20, 20),
    # Below from the first evaluation on: no earlier point to interpolate.
    (5.0, 10, 10),
    (0.1, math.nan, math.nan),
])
def test_crossing_definitions_on_a_hand_made_curve(target, first_evaluation,
                                                   interpolated):
  values = [3.0, 2.0, 1.0, 0.5]
  np.testing.assert_equal(
      statistics.first_crossing_step(STEPS, values, target,
                                     "first_evaluation"), first_evaluation)
  np.testing.assert_equal(
      statistics.first_crossing_step(STEPS, values, target, "interpolated"),
      interpolated)


def test_report_crossing_is_on_the_trailing_mean():
  values = [3.0, 2.0, 1.0, 0.5]
  # Trailing means over 2: 3, 2.5, 1.5, 0.75.
  np.testing.assert_allclose(statistics.trailing_mean(values, 2),
                             [3.0, 2.5, 1.5, 0.75])
  # 2.0 lies between 2.5 (step 20) and 1.5 (step 30): step 25, where the raw
  # values already reached it at step 20.
  assert statistics.report_crossing_step(STEPS, values, 2.0, 2) == 25
  # Its own final value (the mean of the last 2, 0.75) at the last step.
  final = statistics.final_value(values, 2)
  assert final == 0.75
  assert statistics.report_crossing_step(STEPS, values, final, 2) == 40


@pytest.mark.parametrize(("steps", "values", "message"), [
    ([10, 20], [1.0], "equal length"),
    ([20, 10], [2.0, 1.0], "increase strictly"),
])
def test_crossing_rejects_a_malformed_curve(steps, values, message):
  with pytest.raises(ValueError, match=message):
    statistics.first_crossing_step(steps, values, 1.0, "interpolated")


def test_crossing_rejects_an_unknown_definition():
  with pytest.raises(ValueError, match="'first_evaluation' or"):
    statistics.first_crossing_step(STEPS, [3, 2, 1, 0], 1.0, "first")


def test_speedups_by_seed_with_a_run_that_never_reaches():
  baseline = {0: (STEPS, [4, 3, 2, 1]), 1: (STEPS, [4, 3, 2, 1]),
              2: (STEPS, [4, 3, 2, 1])}
  method = {0: (STEPS, [3, 2, 1, 0.5]), 1: (STEPS, [4, 4, 4, 4]),
            3: (STEPS, [1, 1, 1, 1])}
  # Target = the baseline's last value 1, reached at step 40; the method
  # reaches it at step 30 on seed 0, never on seed 1; seeds 2, 3 unpaired.
  result = statistics.speedups(baseline, method, final_points=1,
                               definition="first_evaluation")
  assert list(result.by_seed) == [0, 1]
  assert result.reached == {0: pytest.approx(40 / 30)}
  assert result.not_reached == (1,)
  # Had seed 1 reached it just after its last step, 40, it would be 40 / 40.
  assert result.upper_bounds == {0: pytest.approx(40 / 30), 1: 1.0}
  # Target = mean(2, 1) = 1.5: the baseline crosses it at step 35, the
  # method at 25.
  interpolated = statistics.speedups(baseline, method, final_points=2,
                                     definition="interpolated")
  assert interpolated.reached == {0: pytest.approx(35 / 25)}
  assert interpolated.upper_bounds == {0: pytest.approx(35 / 25),
                                       1: pytest.approx(35 / 40)}


def test_speedups_refuse_a_diverged_baseline():
  with pytest.raises(ValueError, match="diverged"):
    statistics.speedups({0: (STEPS, [4, 3, 2, math.inf])},
                        {0: (STEPS, [4, 3, 2, 1])}, final_points=1,
                        definition="first_evaluation")


def test_aa_noise_floor_on_three_hand_made_runs():
  runs = {0: (STEPS, [4, 3, 2, 1]), 1: (STEPS, [3, 2, 1, 1]),
          2: (STEPS, [4, 4, 3, 2])}
  floor = statistics.aa_noise_floor(runs, final_points=1,
                                    definition="first_evaluation")
  # Seed j's steps to seed i's final value against seed i's own steps:
  # finals 1, 1, 2, reached by seed 0 at 40 (1) and 30 (2), by seed 1 at 30
  # (1) and 20 (2), by seed 2 never (1) and at 40 (2).
  expected = {(0, 1): 40 / 30, (0, 2): math.nan, (1, 0): 30 / 40,
              (1, 2): math.nan, (2, 0): 40 / 30, (2, 1): 40 / 20}
  assert floor.by_pair.keys() == expected.keys()
  np.testing.assert_allclose(list(floor.by_pair.values()),
                             list(expected.values()))
  assert floor.not_reached == ((0, 2), (1, 2))
  # Reached, sorted: 3/4, 4/3, 4/3, 2. Percentiles interpolate linearly at
  # ranks 0.025 · 3 and 0.975 · 3.
  assert floor.median == pytest.approx(4 / 3)
  assert (floor.minimum, floor.maximum) == pytest.approx((0.75, 2.0))
  assert floor.low == pytest.approx(0.75 + 0.075 * (4 / 3 - 0.75))
  assert floor.high == pytest.approx(4 / 3 + 0.925 * (2 - 4 / 3))


def test_aa_noise_floor_needs_two_seeds():
  with pytest.raises(ValueError, match="at least 2 seeds"):
    statistics.aa_noise_floor({0: (STEPS, [3, 2, 1, 0])}, 1, "interpolated")


def test_welch_interval_by_hand():
  # Equal n and equal spread: ν = 2(n − 1) = 2, the SE sqrt(2/2 + 2/2).
  interval = statistics.welch_interval([0.0, 2.0], [1.0, 3.0])
  half = 4.302653 * math.sqrt(2.0)
  assert interval.mean == pytest.approx(-1.0)
  assert (interval.low, interval.high) == pytest.approx((-1 - half, -1 + half))


def test_welch_interval_matches_scipy_with_unequal_spreads():
  a, b = [0.31, 0.12, 0.25], [0.08, 0.05, 0.11, 0.02, 0.09]
  interval = statistics.welch_interval(a, b, confidence=0.9)
  expected = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(
      0.9)
  assert interval.mean == pytest.approx(np.mean(a) - np.mean(b))
  assert (interval.low, interval.high) == pytest.approx(
      (expected.low, expected.high))


@pytest.mark.parametrize(("a", "b", "message"), [
    ([1.0], [1.0, 2.0], "a needs at least 2"),
    ([1.0, 2.0], [1.0, math.inf], "b contains non-finite"),
    ([1.0, 1.0], [2.0, 2.0], "spread"),
])
def test_welch_interval_rejects_bad_input(a, b, message):
  with pytest.raises(ValueError, match=message):
    statistics.welch_interval(a, b)
