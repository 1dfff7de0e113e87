"""The comparison the main job prints: steps to mini-batch SGD's final loss."""

import json

import pytest

from experiments import report

STEPS = range(10, 101, 10)
# The preset names its baseline run and the report its method's label.
BASELINE = ("minibatch_sgd", "mini-batch SGD")


def _write_run(root, name, loss_of_step, seed=0):
  directory = root / name / f"seed{seed}"
  directory.mkdir(parents=True)
  records = [{"step": s, "epoch": s / 10, report.SHARED_LOSS: loss_of_step(s)}
             for s in STEPS]
  (directory / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  (directory / "summary.json").write_text(json.dumps({
      "name": name, "seed": seed, "status": "completed", "steps": STEPS[-1],
      "main_metric": "test_accuracy", "final_test_accuracy": 0.5,
      "wall_seconds": 1.0}))


# Linear losses, so that the trailing mean of the last 3 measurements at step
# s is the loss at s − 10 and the crossings are exact: mini-batch SGD ends at
# 2 − 90/100 = 1.1 at step 100; 2 − (s − 10)/r reaches 1.1 at s = 10 + 0.9·r.
@pytest.mark.parametrize(("rate", "speedup", "verdict"), [
    (40.0, 100 / 46, "The claimed effect shows at this size."),
    (80.0, 100 / 82, "The claimed effect is NOT there at this size."),
])
def test_speedup_and_the_verdict_on_the_papers_claim(tmp_path, rate, speedup,
                                                     verdict):
  assert report.FINAL_POINTS == 3
  for seed in (0, 1):
    _write_run(tmp_path, "minibatch_sgd", lambda s: 2 - s / 100, seed)
    _write_run(tmp_path, "extrap_sgd", lambda s: 2 - s / rate, seed)
  text = report.compare(tmp_path, claimed_speedup=2.0, baseline=BASELINE)
  assert (f"extrap_sgd reached mini-batch SGD's final loss {speedup:.2f}x as "
          "fast (faster;") in text
  assert (f"The paper reports at least 2x; measured here: {speedup:.2f}x. "
          f"{verdict}") in text
  assert "The paper reports" not in report.compare(tmp_path)


def test_one_seed_gives_no_verdict_on_the_papers_claim(tmp_path):
  _write_run(tmp_path, "minibatch_sgd", lambda s: 2 - s / 100)
  _write_run(tmp_path, "extrap_sgd", lambda s: 2 - s / 40)
  text = report.compare(tmp_path, claimed_speedup=2.0, baseline=BASELINE)
  assert (f"final loss {100 / 46:.2f}x as fast (faster in this one seed;"
          in text)
  assert (f"measured here: {100 / 46:.2f}x. From one seed, which can neither "
          "show nor rule out the effect") in text
  assert "The claimed effect" not in text


def test_a_method_that_never_reaches_the_target_is_not_there(tmp_path):
  for seed in (0, 1):
    _write_run(tmp_path, "minibatch_sgd", lambda s: 2 - s / 100, seed)
    _write_run(tmp_path, "extrap_sgd", lambda s: 1.5, seed)
  text = report.compare(tmp_path, claimed_speedup=2.0, baseline=BASELINE)
  assert "extrap_sgd did not reach mini-batch SGD's final loss." in text
  assert ("measured here: never. The claimed effect is NOT there at this "
          "size.") in text
