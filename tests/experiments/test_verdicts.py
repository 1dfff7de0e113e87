"""`experiments.verdicts`: the sentences against hand-written expectations."""

import math

import pytest

from experiments import statistics
from experiments import verdicts


@pytest.mark.parametrize(("interval", "sentence"), [
    (statistics.Interval(1.19, 1.03, 1.34),
     "EXTRAP: 1.19x, 95% CI [1.03, 1.34]: faster than the baseline."),
    (statistics.Interval(1.133, 0.70, 1.56),
     "EXTRAP: 1.13x: not distinguishable from 1 (95% CI [0.70, 1.56] "
     "contains 1)."),
    # An end at the null itself does not exclude it.
    (statistics.Interval(1.1, 1.0, 1.2),
     "EXTRAP: 1.10x: not distinguishable from 1 (95% CI [1.00, 1.20] "
     "contains 1)."),
    (statistics.Interval(0.8, 0.7, 0.9),
     "EXTRAP: 0.80x, 95% CI [0.70, 0.90]: slower than the baseline."),
    # 0.9998 would print as 1.00: the bounds get the digits that show it.
    (statistics.Interval(1.2345, 0.9998, 1.4693),
     "EXTRAP: 1.23x: not distinguishable from 1 (95% CI [0.9998, 1.4693] "
     "contains 1)."),
])
def test_claim_sentence_for_a_speedup(interval, sentence):
  assert verdicts.claim_sentence("EXTRAP", interval) == sentence


@pytest.mark.parametrize(("interval", "verdict"), [
    (statistics.Interval(-0.11, -0.2, -0.02),
     "-0.1100, 90% CI [-0.2000, -0.0200]: lower final loss."),
    (statistics.Interval(-0.11, -0.25, 0.02),
     "-0.1100: not distinguishable from 0 (90% CI [-0.2500, 0.0200] "
     "contains 0)."),
    (statistics.Interval(0.05, 0.01, 0.09),
     "0.0500, 90% CI [0.0100, 0.0900]: higher final loss."),
])
def test_claim_sentence_for_a_loss_difference(interval, verdict):
  sentence = verdicts.claim_sentence(
      "difference", interval, null=0.0, unit="", above="higher final loss",
      below="lower final loss", confidence=0.9, digits=4)
  assert sentence == f"difference: {verdict}"


def test_noise_verdict_states_the_numbers():
  within = verdicts.noise_verdict(-0.1, 0.06, seeds=5)
  assert within == (
      "The final-loss difference: -0.1000 observed; the study's "
      "seed-to-seed sample SD of it (5 seeds): 0.0600; 2 SD = 0.1200. "
      "|0.1000| <= 0.1200: within the noise.")
  beyond = verdicts.noise_verdict(0.3, 0.06, seeds=5, multiple=3)
  assert "3 SD = 0.1800. |0.3000| > 0.1800: beyond the noise" in beyond


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"difference": math.nan, "seed_sd": 0.1, "seeds": 3}, "difference"),
    ({"difference": 0.1, "seed_sd": -0.1, "seeds": 3}, "seed_sd"),
    ({"difference": 0.1, "seed_sd": 0.1, "seeds": 1}, "seeds"),
])
def test_noise_verdict_rejects_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    verdicts.noise_verdict(**kwargs)
