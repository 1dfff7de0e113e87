"""A run checkpointed by K workers resumes on K' (the runner's elastic restore)."""

import jax
import numpy as np
import pytest

import extrap_optax
from experiments import checkpointing
from experiments import configs
from experiments import report
from experiments import train


def _config(num_workers):
  config = configs.get_preset("table1", "toy").runs["resnet20_extrap_sgd"]
  config.workers.num_workers = num_workers
  config.num_steps = 4
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  return config


@pytest.mark.parametrize("before,after", [(8, 4), (4, 8)])
def test_a_run_resumes_on_another_number_of_workers(before, after, tmp_path):
  killed, _ = train.train_and_evaluate(_config(before), tmp_path,
                                       stop_at_step=2)
  assert killed["steps"] == 2
  saved = checkpointing.Checkpointer(tmp_path / "checkpoints", max_to_keep=3)
  assert saved.saved_num_workers(2) == before
  saved.close()

  setup = train.set_up(_config(after))
  summary, state = train.train_and_evaluate(_config(after), tmp_path,
                                            setup=setup)
  assert summary["status"] == "completed" and summary["steps"] == 4
  assert any(f"checkpoint of {before} workers on {after}" in note
             for note in summary["checkpoint_problems"])
  for leaf in jax.tree.leaves(state["params"]):
    assert leaf.shape[0] == after
  # Steps 3 and 4 trained on K' workers and were logged once each.
  steps = [r["step"] for r in report.read_metrics(tmp_path)
           if "online_train_loss" in r]
  assert steps == [1, 2, 3, 4]
  assert all(np.isfinite(r["online_train_loss"])
             for r in report.read_metrics(tmp_path) if "online_train_loss" in r)
  # One shared point on every new worker.
  y = extrap_optax.evaluation_params(state["params"], state["opt_state"])
  for leaf in jax.tree.leaves(y):
    leaf = np.asarray(leaf)
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))


def test_without_a_resize_a_worker_count_mismatch_is_an_error(tmp_path):
  train.train_and_evaluate(_config(4), tmp_path, stop_at_step=2)
  checkpointer = checkpointing.Checkpointer(tmp_path / "checkpoints",
                                            max_to_keep=3)
  like = train.init_state(train.set_up(_config(8)))
  with pytest.raises(checkpointing.WorkerCountError, match="num_workers=4"):
    checkpointer.restore_latest(like)
  checkpointer.close()
