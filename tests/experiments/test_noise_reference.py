"""The main job's one-seed verdict against a study's seed-to-seed spread."""

import dataclasses
import json
import math
import pathlib

import scipy.stats

from experiments import noise_reference
from experiments.configs import presets

REPO = pathlib.Path(__file__).resolve().parents[2]

KEY = "shared_point_train_loss"
BATCH_STATS_KEY = "shared_point_train_loss_batch_stats"


def _run(directory, name, seed, finals_at_60, lr=0.05):
  """A run whose losses are `finals_at_60` at steps 40-60 (then 9 after)."""
  directory.mkdir(parents=True)
  records = []
  for step in range(10, 101, 10):
    loss = finals_at_60 if 40 <= step <= 60 else 9.0
    records.append({"step": step, "epoch": step / 10, KEY: loss,
                    BATCH_STATS_KEY: loss})
  (directory / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  (directory / "summary.json").write_text(json.dumps(
      {"name": name, "seed": seed, "status": "completed", "steps": 100,
       "main_metric": "test_accuracy", "wall_seconds": 1.0}))
  # Saved with another method's field too (momentum for the baseline and
  # a field of Adam's), as configurations before per-method fields were.
  config = {"optimizer": {"method": "minibatch_sgd", "base_learning_rate": lr,
                          "momentum": 0.9, "b2": 0.98 if seed else 0.999},
            "workers": {}, "schedule": {}, "model": {},
            "task": "classification"}
  (directory / "config.json").write_text(json.dumps(config))


def _main_job(root, difference, lr=0.05):
  for name, final in (("sgd", 1.0), ("extrap", 1.0 + difference)):
    _run(root / name / "seed0", name, 0, final, lr)
    # The main job stops at step 60.
    path = root / name / "seed0" / "metrics.jsonl"
    lines = path.read_text().splitlines()[:6]
    path.write_text("\n".join(lines) + "\n")


def _study(root, differences):
  for seed, d in enumerate(differences, 1):
    _run(root / "seeds" / "sgd" / f"seed{seed}", "sgd", seed, 2.0)
    _run(root / "seeds" / "extrap" / f"seed{seed}", "extrap", seed, 2.0 + d)


def test_within_and_beyond_the_prediction_interval(tmp_path):
  differences = [-0.1, 0.0, 0.1]   # sample SD 0.1, n = 3
  _study(tmp_path / "study", differences)
  bound = scipy.stats.t.ppf(0.975, 2) * math.sqrt(1 + 1 / 3) * 0.1   # 0.4969
  _main_job(tmp_path / "inside", 0.45)
  text = noise_reference.compare_with_study(
      tmp_path / "inside", tmp_path / "study", "sgd", "extrap", KEY)
  assert "+0.4500" in text and "sample SD 0.1000" in text
  assert f"= {bound:.4f}" in text and "within the noise" in text
  assert (f"the 95% prediction bound of one more seed under no effect, "
          f"t_{{0.975, 2}}·sqrt(1 + 1/3) = {bound / 0.1:.3g} SD") in text
  _main_job(tmp_path / "outside", -0.55)
  text = noise_reference.compare_with_study(
      tmp_path / "outside", tmp_path / "study", "sgd", "extrap", KEY)
  assert "beyond the noise" in text


def test_a_study_at_another_setting_is_no_reference(tmp_path):
  _study(tmp_path / "study", [-0.1, 0.0, 0.1])
  _main_job(tmp_path / "job", 0.2, lr=0.1)
  text = noise_reference.compare_with_study(
      tmp_path / "job", tmp_path / "study", "sgd", "extrap", KEY)
  assert "another setting" in text and "no noise reference" in text
  assert "within the noise" not in text and "beyond the noise" not in text


def test_the_main_jobs_committed_reference_is_at_its_own_setting(tmp_path):
  """The committed seeds the main job compares with were trained as it trains."""
  preset = presets.get_preset("fig1", "small")
  seeds_dir = REPO / preset.noise_reference / "seeds"
  for name, config in preset.runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(config.to_json_best_effort())
    seeds = sorted((seeds_dir / name).glob("seed*"))
    assert len(seeds) >= 2, f"fewer than 2 committed seeds of {name}"
    for seed in seeds:
      assert (noise_reference._setting({"dir": seed})
              == noise_reference._setting({"dir": tmp_path / name})), seed


def test_the_main_job_judges_both_y_losses(tmp_path, monkeypatch):
  """One line per y-loss: the eval-mode one alone swings with BatchNorm."""
  from experiments import configs
  from experiments import main

  study = tmp_path / "study"
  _study(study, [-0.1, 0.0, 0.1])
  toy = configs.get_preset("fig1", "toy")
  monkeypatch.setattr(configs, "get_preset", lambda *_: dataclasses.replace(
      toy, noise_reference=str(study)))
  # Completed runs are not trained again: the job only compares them.
  root = tmp_path / "runs" / "fig1-toy"
  for name in toy.runs:
    _run(root / name / "seed0", name, 0, 1.0)
  assert main.main(["--preset", "fig1", "--scale", "toy", "--runs-dir",
                    str(tmp_path / "runs")]) == 0
  text = (root / "comparison.md").read_text()
  for loss in (KEY, BATCH_STATS_KEY):
    assert f"Final {loss} at step 100, extrap_sgd − minibatch_sgd:" in text
