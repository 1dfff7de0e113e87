"""A killed run resumed by a fresh trainer ends exactly where an uninterrupted one does."""

import jax
import numpy as np
import pytest

from experiments import configs
from experiments import report
from experiments import train
from tests import event_files


def _final_parameters(config, run_dir, stop_at_step=None):
  setup = train.set_up(config)
  summary, state = train.train_and_evaluate(
      config, run_dir, stop_at_step=stop_at_step, setup=setup)
  return summary, train.final_parameters(setup, state), state


@pytest.mark.parametrize("preset,run", [
    # BatchNorm statistics, device-side augmentation keyed by step, and
    # per-worker noise keyed by step.
    ("table1", "resnet20_extrap_uniform_noise"),
    # The LSTM's carried hidden state, dropout keys, host-side batches.
    ("fig2", "extrap_sgd_k4"),
])
def test_resumed_run_matches_uninterrupted_run(preset, run, tmp_path):
  config = configs.get_preset(preset, "toy").runs[run]
  config.num_steps = 4
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  _, expected, expected_state = _final_parameters(config, tmp_path / "full")

  killed, _, _ = _final_parameters(config, tmp_path / "resumed",
                                   stop_at_step=2)
  assert killed["status"] == "stopped" and killed["steps"] == 2
  summary, resumed, resumed_state = _final_parameters(
      config, tmp_path / "resumed")
  assert summary["status"] == "completed" and summary["steps"] == 4

  jax.tree.map(np.testing.assert_array_equal, resumed, expected)
  # The whole state, per worker: extrapolation points, momentum, BN, carry.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(
      np.asarray(a), np.asarray(b)), resumed_state, expected_state)
  steps = [r["step"] for r in report.read_metrics(tmp_path / "resumed")
           if "online_train_loss" in r]
  assert steps == [1, 2, 3, 4]
  full = [r["online_train_loss"] for r in report.read_metrics(tmp_path / "full")
          if "online_train_loss" in r]
  again = [r["online_train_loss"] for r in report.read_metrics(tmp_path / "resumed")
           if "online_train_loss" in r]
  assert full == again
  # TensorBoard: the redone steps once each, as in the uninterrupted run.
  scalars, counts = event_files.tensorboard_scalars(tmp_path / "resumed" / "tb")
  expected_scalars, _ = event_files.tensorboard_scalars(tmp_path / "full" / "tb")
  assert max(counts.values()) == 1
  assert (event_files.without_throughput(scalars)
          == event_files.without_throughput(expected_scalars))
