"""The trainer end to end: the main command, artifacts, report, non-finite stop."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing
from experiments import configs
from experiments import main
from experiments import report
from experiments import tasks
from experiments import train


def test_main_command_runs_fig1_and_compares(tmp_path, capsys):
  """The README's command at toy size: both methods, comparison, report."""
  assert main.main(["--preset", "fig1", "--scale", "toy", "--runs-dir",
                    str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| minibatch_sgd | 1 | completed | 2 |" in out
  assert "| extrap_sgd | 1 | completed | 2 |" in out
  root = tmp_path / "fig1-toy"
  assert (root / "comparison.md").read_text() in out
  run = root / "extrap_sgd" / "seed0"
  records = report.read_metrics(run)
  assert [r["step"] for r in records if "train_loss" in r] == [1, 2]
  # fig1 toy probes the smoothness every step; evaluation at the end.
  assert all(r["smoothness"] > 0 for r in records if "train_loss" in r)
  assert "test_accuracy" in records[-1]
  config = json.loads((run / "config.json").read_text())
  assert config["optimizer"]["method"] == "extrap_sgd"
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]

  # A second invocation skips completed runs.
  assert main.main(["--preset", "fig1", "--scale", "toy", "--runs-dir",
                    str(tmp_path), "--only", "extrap_sgd"]) == 0
  assert "already completed" in capsys.readouterr().out

  assert main.main(["report", "--runs", str(tmp_path)]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  assert "## fig1-toy" in text
  assert (tmp_path / "report" / "fig1-toy.png").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = configs.get_preset("fig2", "toy").runs["minibatch_sgd_k4"]
  config.num_steps = 6
  trainer = train.Trainer(config, tmp_path)
  original_loss = trainer.task.loss

  def loss_that_breaks(params, model_state, batch, rng, step):
    value, aux = original_loss(params, model_state, batch, rng, step)
    return jnp.where(step >= 3, jnp.nan, value), aux

  trainer.task.loss = loss_that_breaks
  with pytest.raises(train.NonFiniteLossError,
                     match="loss is nan at step 4.*last good checkpoint is "
                     "step 3"):
    trainer.train()
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["status"] == "diverged"
  checkpointer = checkpointing.Checkpointer(tmp_path / "checkpoints",
                                            max_to_keep=2)
  assert checkpointer.latest_step() == 3
  state = checkpointer.restore(3, trainer.init_state())
  checkpointer.close()
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree.leaves(state))


def test_steps_to_reach_uses_the_smoothed_loss():
  records = [{"step": s, "epoch": s / 2, "train_loss": loss}
             for s, loss in enumerate([4.0, 2.0, 3.0, 1.0, 1.0, 1.0], 1)]
  steps, _, smoothed = report.smoothed_train_loss(records)
  np.testing.assert_allclose(smoothed, [4.0, 3.0, 2.5, 2.0, 1.0, 1.0])
  assert report.steps_to_reach(records, 2.0) == 4
  assert math.isnan(report.steps_to_reach(records, 0.5))
  assert list(steps) == [1, 2, 3, 4, 5, 6]


def test_evaluation_subset_of_class_sorted_data_covers_every_class():
  # The offline CIFAR arrays are sorted by class; a leading slice of 2,000 test
  # images would hold two classes only.
  labels = np.repeat(np.arange(10), 1000)
  images = np.arange(10000)[:, None]
  sub_images, sub_labels = tasks._subset(images, labels, 2000)
  counts = np.bincount(sub_labels, minlength=10)
  assert len(sub_labels) == 2000 and counts.min() > 150
  np.testing.assert_array_equal(labels[sub_images[:, 0]], sub_labels)
  assert tasks._subset(images, labels, 0)[1] is labels


def test_cli_gives_each_worker_a_cpu_device():
  # Without it a CPU-only run vmaps all K workers over one device, which is
  # several times slower for convolutions (benchmarks/).
  code = ("from experiments import main; main._request_cpu_devices(6, 2); "
          "import jax; print(jax.local_device_count())")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True).stdout
  assert out.split()[-1] == "3"
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=5"
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True).stdout
  assert out.split()[-1] == "5"
