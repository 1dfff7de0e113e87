"""The study command: the paper's tuning protocol, resumable exactly."""

import dataclasses
import json
import math

import numpy as np
import PIL.Image
import pytest
import scipy.stats

from experiments import main
from experiments import report
from experiments import study as study_lib
from experiments import schedules
from experiments import study_report
from experiments.configs import studies

# Written per run but not results: they depend on the machine and the clock.
TIMING_KEYS = ("throughput",)
SUMMARY_TIMING_KEYS = ("wall_seconds", "first_step_seconds", "finished_at")


def _fake_trainer(loss_of, decoy_of=None):
  """A train_fn whose final loss is `loss_of(config)`; records the calls.

  The loss is recorded as `shared_point_train_loss` and, for translation
  configs, as `valid_loss`, with `decoy_of(config)` as the training loss.
  """
  calls = []

  def train_fn(config, directory, stop_at_step):
    calls.append((config.name, config.optimizer.base_learning_rate,
                  config.optimizer.get("extrapolation_scale"), config.seed))
    train_fn.configs.append(config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json())
    loss = loss_of(config)
    translation = config.task == "translation"
    records = [{"step": s, "epoch": s / 2.0,
                "shared_point_train_loss": (decoy_of(config) if translation
                                            else loss) + 1.0 / s}
               for s in range(1, 5)]
    if translation:
      for record in records:
        record["valid_loss"] = loss + 1.0 / record["step"]
    (directory / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    summary = {"name": config.name, "seed": config.seed, "steps": 4,
               "status": "completed", "final_test_accuracy": 0.5,
               "final_test_bleu": 10.0 + config.seed}
    (directory / "summary.json").write_text(json.dumps(summary))
    return summary

  train_fn.configs = []
  return train_fn, calls


def test_grids_are_extended_until_the_best_value_is_inside(tmp_path):
  study = studies.toy()
  study = dataclasses.replace(study, max_extensions=3)
  # Mini-batch SGD is best at γ0 = 0.05; EXTRAP-SGD at c = 8, beyond the
  # initial grid (1, 2): the grid must grow to 4 and 8 and then 16.
  def loss_of(config):
    if config.optimizer.method == "minibatch_sgd":
      return abs(config.optimizer.base_learning_rate - 0.05)
    return abs(math.log2(config.optimizer.extrapolation_scale) - 3)

  train_fn, calls = _fake_trainer(loss_of)
  runner = study_lib.StudyRunner(study, tmp_path, train_fn=train_fn,
                                 log=lambda _: None)
  choices = runner.execute()
  assert choices["baseline"] == 0.05
  assert choices["variants"] == {"extrap_sgd": 8.0}
  tuned = [c[2] for c in calls if c[0] == "extrap_sgd" and c[3] == 0]
  assert tuned == [1.0, 2.0, 4.0, 8.0, 16.0]
  # Every variant reuses the baseline's best rate.
  assert {c[1] for c in calls if c[0] == "extrap_sgd"} == {0.05}
  # The other seeds of each best setting.
  assert sorted(c for c in calls if c[3] == 1) == [
      ("extrap_sgd", 0.05, 8.0, 1), ("minibatch_sgd", 0.05, None, 1)]

  # Completed runs are never trained again.
  again, calls_again = _fake_trainer(loss_of)
  assert study_lib.StudyRunner(study, tmp_path, train_fn=again,
                               log=lambda _: None).execute() == choices
  assert not calls_again


def test_grid_extension_is_bounded(tmp_path):
  study = dataclasses.replace(studies.toy(), max_extensions=1)
  train_fn, calls = _fake_trainer(
      lambda c: -c.optimizer.get("extrapolation_scale", 0.0))  # bigger: better
  choices = study_lib.StudyRunner(study, tmp_path, train_fn=train_fn,
                                  log=lambda _: None).execute()
  assert choices["variants"] == {"extrap_sgd": 4.0}
  assert [c[2] for c in calls if c[0] == "extrap_sgd" and c[3] == 0] == [
      1.0, 2.0, 4.0]


def test_seed_runs_go_seed_by_seed_so_a_stopped_study_has_matched_pairs(
    tmp_path):
  study = dataclasses.replace(studies.toy(), seeds=(1, 2))
  train_fn, calls = _fake_trainer(
      lambda c: c.optimizer.get("extrapolation_scale", 0.0))
  choices = study_lib.StudyRunner(study, tmp_path, train_fn=train_fn,
                                  log=lambda _: None).execute()
  seed_calls = [(c[3], c[0]) for c in calls if c[3] > 0]
  assert [seed for seed, _ in seed_calls] == [1, 1, 2, 2]
  assert {m for s, m in seed_calls if s == 1} == {"minibatch_sgd",
                                                   "extrap_sgd"}
  # The comparison is the comparison seeds only, not the tuning run that
  # won (the winner's curse).
  assert choices["seed_dirs"] == {
      m: [f"seeds/{m}/seed1", f"seeds/{m}/seed2"]
      for m in ("minibatch_sgd", "extrap_sgd")}


def test_the_baselines_grid_is_extended_like_every_grid(tmp_path):
  # The baseline is best at the lowest rate of its grid (0.05, 0.1) and
  # better still below it: the grid grows to 0.025 and 0.0125 (at most
  # `max_extensions` = 2 times), as App. C.1 asks of every hyperparameter.
  study = studies.toy()
  assert study.max_extensions == 1
  study = dataclasses.replace(study, max_extensions=2)
  train_fn, calls = _fake_trainer(
      lambda c: abs(c.optimizer.base_learning_rate - 0.02))
  choices = study_lib.StudyRunner(study, tmp_path, train_fn=train_fn,
                                  log=lambda _: None).execute()
  assert [c[1] for c in calls if c[0] == "minibatch_sgd" and c[3] == 0] == [
      0.05, 0.1, 0.025, 0.0125]
  assert choices["baseline"] == 0.025


def test_a_grid_of_one_value_is_a_fixed_setting(tmp_path):
  study = dataclasses.replace(studies.toy(), baseline_grid=(0.05,))
  train_fn, calls = _fake_trainer(
      lambda c: abs(c.optimizer.base_learning_rate - 0.02))
  choices = study_lib.StudyRunner(study, tmp_path, train_fn=train_fn,
                                  log=lambda _: None).execute()
  assert choices["baseline"] == 0.05
  assert [c[1] for c in calls if c[0] == "minibatch_sgd" and c[3] == 0] == [
      0.05]


def test_dry_run_lists_the_next_runs_and_trains_nothing(tmp_path, capsys):
  assert main.main(["study", "--study", "toy", "--runs-dir", str(tmp_path),
                    "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "minibatch_sgd base_learning_rate=0.05" in out
  assert "2 runs next" in out
  assert not (tmp_path / "study-toy").exists()


def _results(root):
  """Every run's records and summary, without what depends on the clock."""
  results = {}
  for run in report.load_runs(root):
    if "report" in run["dir"].parts:
      continue
    name = str(run["dir"].relative_to(root))
    records = [{k: v for k, v in r.items() if k not in TIMING_KEYS}
               for r in run["metrics"]]
    summary = {k: v for k, v in run["summary"].items()
               if k not in SUMMARY_TIMING_KEYS}
    results[name] = (records, summary)
  return results


@pytest.mark.slow
def test_stopped_and_restarted_study_matches_uninterrupted(tmp_path):
  study = dataclasses.replace(
      studies.toy(), baseline_grid=(0.05, 0.1), max_extensions=0)
  study.base.num_steps = 3
  study.base.checkpoint_every_steps = 2
  full_root, resumed_root = tmp_path / "full", tmp_path / "resumed"
  choices = study_lib.StudyRunner(study, full_root,
                                  log=lambda _: None).execute()
  assert choices["baseline"] in (0.05, 0.1)
  # Stopped every 2 steps: inside runs (after a checkpoint step and after a
  # step without one) and between runs, as a killed job would be.
  invocations = 0
  while True:
    invocations += 1
    runner = study_lib.StudyRunner(study, resumed_root, max_steps=2,
                                   log=lambda _: None)
    try:
      resumed_choices = runner.execute()
      break
    except study_lib.BudgetExhausted:
      assert invocations < 50
  assert invocations > 3
  assert resumed_choices == choices
  expected, actual = _results(full_root), _results(resumed_root)
  assert sorted(actual) == sorted(expected)
  for name in expected:
    assert actual[name] == expected[name], name
  # The report of both is the same too.
  text = study_report.write_report(study, full_root, tmp_path / "report_full")
  assert "Stage 3" in text and "| mini-batch SGD | 1 |" in text
  assert (tmp_path / "report_full" / "toy.png").exists()
  copied = list((tmp_path / "report_full" / "runs").rglob("metrics.jsonl"))
  assert len(copied) == len(expected)
  assert not list((tmp_path / "report_full").rglob("checkpoints"))


def test_first_crossing_interpolates_and_final_value_averages():
  records = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0},
             {"step": 25}, {"step": 30, "loss": 1.0}, {"step": 40, "loss": 0.5}]
  assert report.first_crossing(records, "loss", 1.5) == 25.0
  assert report.first_crossing(records, "loss", 3.0) == 10.0
  assert math.isnan(report.first_crossing(records, "loss", 0.1))
  # On the trailing mean of 2: 3, 2.5, 1.5, 0.75 at steps 10, 20, 30, 40.
  assert report.first_crossing(records, "loss", 2.0, window=2) == 25.0
  assert report.first_crossing(records, "loss", 0.75, window=2) == 40.0
  np.testing.assert_allclose(report.final_value(records, "loss", 2), 0.75)
  assert math.isnan(report.final_value(records, "other", 2))


def test_a_changed_study_definition_is_refused(tmp_path):
  study = studies.toy()
  train_fn, _ = _fake_trainer(lambda c: 1.0)
  study_lib.StudyRunner(study, tmp_path, train_fn=train_fn,
                        log=lambda _: None).execute()
  changed = studies.toy()
  changed.base.workers.local_batch_size = 3
  with pytest.raises(ValueError, match="workers.local_batch_size"):
    study_lib.StudyRunner(changed, tmp_path, train_fn=train_fn,
                          log=lambda _: None).execute()


def test_fig3_study_is_the_documented_proxy_tuned_by_validation_loss(
    tmp_path, capsys):
  """Figure 3's proxy: Adam's schedule scale over a grid extended until its
  best is inside, then EXTRAP-ADAM's c at Adam's best, both chosen by the
  shared point's validation loss (here its training loss prefers other
  values), then the seeds; the report shows test BLEU."""
  assert main.main(["study", "--study", "fig3_cpu", "--runs-dir",
                    str(tmp_path / "dry"), "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert [line.split("->")[0].strip() for line in out.splitlines()[:-1]] == [
      "adam scale=0.125", "adam scale=0.25", "adam scale=0.5", "adam scale=1"]
  assert "4 runs next" in out

  def validation_loss(config):
    if config.optimizer.method == "adam":
      return abs(math.log2(config.schedule.scale) - 1)      # best at 2
    return abs(math.log2(config.optimizer.extrapolation_scale) - 1)  # at 2

  def training_loss(config):
    return config.schedule.scale - config.optimizer.get("extrapolation_scale",
                                                        0.0)

  study = studies.fig3_cpu()
  train_fn, _ = _fake_trainer(validation_loss, training_loss)
  choices = study_lib.StudyRunner(study, tmp_path / "study", train_fn=train_fn,
                                  log=lambda _: None).execute()
  assert choices["baseline"] == 2.0
  assert choices["variants"] == {"extrap_adam": 2.0}
  adam = [c for c in train_fn.configs if c.name == "adam" and c.seed == 0]
  # The grid, then doubled twice: 2 was at its top, then inside.
  assert [c.schedule.scale for c in adam] == [0.125, 0.25, 0.5, 1, 2, 4]
  for config in adam:
    assert config.optimizer.method == "adam"
    assert (config.task, config.data.dataset, config.data.source) == (
        "translation", "multi30k", "auto")
    # All 29,000 training pairs, all 1,014 validation and 1,000 test pairs.
    assert (config.data.train_size, config.data.eval_size) == (0, 0)
    assert not config.data.bleu_at_every_eval
    assert (config.workers.num_workers, config.workers.local_batch_size) == (
        20, 64)
    assert config.model.kwargs.to_dict() == dict(
        d_model=64, d_ff=256, num_heads=4, num_encoder_layers=2,
        num_decoder_layers=2)
    opt = config.optimizer
    # Adam's own fields only: no SGD momentum, weight decay or LARS.
    assert opt.to_dict() == dict(method="adam", base_learning_rate=0.1,
                                 grad_clip_norm=0.0, b1=0.9, b2=0.98,
                                 eps=1e-9)
    assert config.schedule.name == "inverse_sqrt"
    # 29,000 // (20 * 64) = 22 steps an epoch, 15 epochs; the rate peaks at
    # the end of a 33-step warm-up at c_s·d^-1/2·w^-1/2; the validation loss
    # every half epoch.
    num_steps = schedules.total_steps(config, 22)
    assert num_steps == 330
    rates = [float(schedules.make_schedule(config, 22, num_steps)(count))
             for count in range(num_steps)]
    assert int(np.argmax(rates)) + 1 == 33
    np.testing.assert_allclose(
        max(rates), config.schedule.scale * 64 ** -0.5 * 33 ** -0.5,
        rtol=1e-6)
    assert config.num_evals == 30
  tuned = [c for c in train_fn.configs if c.name == "extrap_adam"]
  assert [c.optimizer.extrapolation_scale for c in tuned if c.seed == 0] == [
      1.0, 2.0, 4.0]
  assert {c.schedule.scale for c in tuned} == {2.0}
  assert {c.optimizer.method for c in tuned} == {"extrap_adam"}
  assert sorted((c.name, c.seed) for c in train_fn.configs if c.seed) == [
      ("adam", 1), ("adam", 2), ("adam", 3), ("adam", 4),
      ("extrap_adam", 1), ("extrap_adam", 2), ("extrap_adam", 3),
      ("extrap_adam", 4)]

  text = study_report.write_report(study, tmp_path / "study", tmp_path / "report")
  assert "Criterion: `valid_loss`" in text
  assert "| scale | status | steps | final valid_loss | test BLEU |" in text
  # The summaries' BLEU is 10 + seed: mean and sample SD over seeds 1-4
  # (sqrt(5/3) = 1.29).
  assert "| Adam | 4 | 0.3611 ± 0.0000 | 12.50 ± 1.29 |" in text
  # Validation loss only: no empty smoothness panel (5.5 inches at 110 dpi).
  assert PIL.Image.open(tmp_path / "report" / "fig3_cpu.png").size[0] == 605


def test_a_new_baseline_value_tunes_the_variant_again_beside_the_old_runs(
    tmp_path):
  # A first study chose γ0 = 0.1 and tuned c there; a later extension of the
  # baseline's grid makes 0.05 the best: c is tuned again, at 0.05, and the
  # runs at 0.1 stay where they are.
  study = studies.toy()
  first, _ = _fake_trainer(lambda c: abs(c.optimizer.base_learning_rate - 0.1))
  study_lib.StudyRunner(study, tmp_path, train_fn=first,
                        log=lambda _: None).execute()
  old = tmp_path / "tune" / "extrap_sgd" / "base_learning_rate=0.1"
  old_runs = sorted(p.name for p in old.iterdir())
  assert "extrapolation_scale=1" in old_runs and len(old_runs) >= 2
  second, calls = _fake_trainer(
      lambda c: abs(c.optimizer.base_learning_rate - 0.05))
  # The baseline's tuning and the seeds of the old setting set aside (a seed
  # run of another setting is refused, naming the field).
  (tmp_path / "tune" / "minibatch_sgd").rename(tmp_path / "old_baseline")
  (tmp_path / "seeds").rename(tmp_path / "old_seeds")
  choices = study_lib.StudyRunner(study, tmp_path, train_fn=second,
                                  log=lambda _: None).execute()
  assert choices["baseline"] == 0.05
  assert {c[1] for c in calls if c[0] == "extrap_sgd" and c[3] == 0} == {0.05}
  assert (tmp_path / "tune" / "extrap_sgd" / "base_learning_rate=0.05").is_dir()
  assert sorted(p.name for p in old.iterdir()) == old_runs


def test_fig1_k32_study_is_fig1_at_the_papers_number_of_workers():
  k8, k32 = studies.get_study("fig1_cpu"), studies.get_study("fig1_cpu_k32")
  assert (k32.base.workers.num_workers, k32.base.workers.local_batch_size) == (
      32, 31)
  # The same global batch, within one image per worker: 992 against 1000.
  assert abs(32 * 31 - 8 * k8.base.workers.local_batch_size) <= 32
  # γ0 re-tuned from K = 8's best with a neighbour on each side, not carried
  # over; c re-checked over {1, 2, 4}.
  assert k32.baseline_grid == (0.0125, studies.FIG1_CPU_LEARNING_RATE, 0.05)
  assert [v.grid for v in k32.variants] == [(1.0, 2.0, 4.0)]
  assert k32.criterion == k8.criterion and k32.final_points == k8.final_points
  for key in ("optimizer", "model", "data"):
    assert k32.base[key].to_dict() == k8.base[key].to_dict(), key
  # The same γ0 means the same rate per image: Goyal et al.'s linear scaling
  # of the peak with the global batch, from the same start of the warm-up.
  rates = []
  for study in (k8, k32):
    config = study.base.copy_and_resolve_references()
    config.optimizer.base_learning_rate = studies.FIG1_CPU_LEARNING_RATE
    rates.append(schedules.make_schedule(config, steps_per_epoch=10,
                                         num_steps=250))
  k8_rate, k32_rate = rates
  assert float(k32_rate(0)) == pytest.approx(float(k8_rate(0)))
  assert float(k8_rate(100)) == pytest.approx(0.025 * 1000 / 125)
  assert float(k32_rate(100)) == pytest.approx(0.025 * 992 / 125)


def test_the_report_bounds_the_speedup_of_seeds_that_never_reach(tmp_path):
  """A seed that never reaches the baseline's final value is left out of the
  mean, and counted at its largest possible speed-up in a stated bound."""
  study = dataclasses.replace(studies.toy(), seeds=(1, 2),
                              secondary_criteria=())
  # Records at steps 1-4 of loss + 1/s; final value = mean of the last
  # `final_points` records. Seed 1's EXTRAP-SGD ends 1 above the baseline,
  # never reaching it; seed 2's ends 1 below.
  def loss_of(config):
    if config.optimizer.method == "minibatch_sgd" or config.seed == 0:
      return 1.0
    return 2.0 if config.seed == 1 else 0.0

  train_fn, _ = _fake_trainer(loss_of)
  study_lib.StudyRunner(study, tmp_path / "study", train_fn=train_fn,
                        log=lambda _: None).execute()
  text = study_report.write_report(study, tmp_path / "study",
                                   tmp_path / "report")
  # By hand: the baseline's losses 2, 1.5, 1.333, 1.25 at steps 1-4; its
  # final value (last 2) 1.2917, reached by its trailing mean of 2 at step
  # 4. Seed 2's EXTRAP-SGD (1, 0.5, ...) is below it at step 1: 4 / 1 = 4x.
  # Seed 1's bound: 4 / its last step 4 = 1x. Over both: mean 2.5, t-interval
  # 2.5 ± t_{0.975, 1}·1.5 (sample SD 2.12 / sqrt 2).
  bound, mean = 1.0, 2.5
  half = scipy.stats.t.ppf(0.975, 1) * 1.5
  assert (f"seeds [1] never reached the baseline's final value (not in the "
          f"mean, which they would lower). Counting each at the largest "
          f"speed-up it could have (baseline's steps / its last step: "
          f"{bound:.2f}x), the mean speed-up over all 2 seeds is at most "
          f"{mean:.2f}x [{mean - half:.2f}, {mean + half:.2f}]") in text


def test_the_report_sets_the_effect_against_the_compared_studys(
    tmp_path, monkeypatch):
  """The change in the paired final-loss difference between two studies gets
  Welch's interval over their independent seeds (SciPy's, here)."""
  reference = dataclasses.replace(studies.toy(), seeds=(1, 2, 3),
                                  secondary_criteria=())
  monkeypatch.setitem(studies.STUDIES, "toy", lambda: reference)
  study = dataclasses.replace(reference, name="toy_k", compared_with="toy")
  # EXTRAP-SGD's final loss is the baseline's minus `gain[seed]`.
  gains = {"toy": {1: 0.1, 2: 0.3, 3: 0.2}, "toy_k": {1: 0.5, 2: 0.9, 3: 0.6}}
  for name, runs in (("toy", reference), ("toy_k", study)):
    def loss_of(config, gain=gains[name]):
      if config.optimizer.method == "minibatch_sgd" or config.seed == 0:
        return 1.0
      return 1.0 - gain[config.seed]

    train_fn, _ = _fake_trainer(loss_of)
    study_lib.StudyRunner(runs, tmp_path / name, train_fn=train_fn,
                          log=lambda _: None).execute()
  text = study_report.write_report(study, tmp_path / "toy_k",
                                   tmp_path / "report",
                                   compared_root=tmp_path / "toy")
  here = [-g for g in gains["toy_k"].values()]
  there = [-g for g in gains["toy"].values()]
  expected = scipy.stats.ttest_ind(here, there,
                                   equal_var=False).confidence_interval()
  change = np.mean(here) - np.mean(there)
  assert (f"| {change:+.4f} [{expected.low:+.4f}, {expected.high:+.4f}] |"
          in text)
  assert "gains more here than in toy" in text
  missing = study_report.write_report(study, tmp_path / "toy_k",
                                      tmp_path / "report2",
                                      compared_root=tmp_path / "nowhere")
  assert f"No runs of toy under {tmp_path / 'nowhere'}." in missing


def test_compared_runs_needs_a_study_that_is_compared(tmp_path):
  with pytest.raises(SystemExit, match="not compared with another one"):
    main.main(["study", "--study", "fig1_cpu", "--runs-dir", str(tmp_path),
               "--compared-runs", str(tmp_path), "--dry-run"])
  assert main.main(["study", "--study", "fig1_cpu_k32", "--runs-dir",
                    str(tmp_path), "--compared-runs", str(tmp_path),
                    "--dry-run"]) == 0
