"""The trainer end to end: the main command, artifacts, report, non-finite stop."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from experiments import checkpointing
from experiments import configs
from experiments import diagnostics
from experiments import main
from experiments import report
from experiments import tasks
from experiments import train
from experiments.tasks import classification


def test_main_command_runs_fig1_and_compares(tmp_path, capsys):
  """The README's command at toy size: both methods, comparison, report."""
  assert main.main(["--preset", "fig1", "--scale", "toy", "--runs-dir",
                    str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| minibatch_sgd | 1 | completed | 2 |" in out
  assert "| extrap_sgd | 1 | completed | 2 |" in out
  root = tmp_path / "fig1-toy"
  assert (root / "comparison.md").read_text() in out
  # Compared at the shared point y, against mini-batch SGD's final loss.
  assert "compared by the shared-point training loss" in out
  assert "mini-batch SGD's final loss" in out
  assert (root / "comparison.png").exists()
  run = root / "extrap_sgd" / "seed0"
  records = report.read_metrics(run)
  assert [r["step"] for r in records if "online_train_loss" in r] == [1, 2]
  # fig1 toy probes the smoothness every step; evaluation at the end.
  assert all(r["smoothness"] > 0 for r in records if "online_train_loss" in r)
  assert "test_accuracy" in records[-1]
  config = json.loads((run / "config.json").read_text())
  assert config["optimizer"]["method"] == "extrap_sgd"
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]

  # A run's saved config alone trains it again, to the same records; with
  # --max-steps, the first steps of them.
  def untimed(records):
    return [{k: v for k, v in r.items() if k != "throughput"}
            for r in records]
  assert main.main(["rerun", str(run / "config.json"), "--run-dir",
                    str(tmp_path / "first"), "--max-steps", "1"]) == 0
  assert untimed(report.read_metrics(tmp_path / "first")) == untimed(
      [r for r in records if r["step"] <= 1])
  assert json.loads((tmp_path / "first" / "summary.json").read_text())[
      "status"] == "stopped"
  assert main.main(["rerun", str(run / "config.json"), "--run-dir",
                    str(tmp_path / "again")]) == 0
  assert untimed(report.read_metrics(tmp_path / "again")) == untimed(records)

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
  setup = train.set_up(config)
  original_loss = setup.task.loss

  def loss_that_breaks(params, model_state, batch, rng, step):
    value, aux = original_loss(params, model_state, batch, rng, step)
    return jnp.where(step >= 3, jnp.nan, value), aux

  setup.task.loss = loss_that_breaks
  with pytest.raises(train.NonFiniteLossError,
                     match="loss is nan at step 4.*last good checkpoint is "
                     "step 3"):
    train.train_and_evaluate(config, tmp_path, setup=setup)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["status"] == "diverged"
  checkpointer = checkpointing.Checkpointer(tmp_path / "checkpoints",
                                            max_to_keep=2)
  assert checkpointer.latest_step() == 3
  state = checkpointer.restore(3, train.init_state(setup))
  checkpointer.close()
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree.leaves(state))


def test_steps_to_reach_uses_the_smoothed_loss():
  records = [{"step": s, "epoch": s / 2, "online_train_loss": loss}
             for s, loss in enumerate([4.0, 2.0, 3.0, 1.0, 1.0, 1.0], 1)]
  steps, _, smoothed = report.smoothed_train_loss(records)
  np.testing.assert_allclose(smoothed, [4.0, 3.0, 2.5, 2.0, 1.0, 1.0])
  assert report.steps_to_reach(records, 2.0) == 4
  assert math.isnan(report.steps_to_reach(records, 0.5))
  assert list(steps) == [1, 2, 3, 4, 5, 6]


def test_training_subset_is_the_first_examples_of_each_class():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 40)
  images = np.arange(40)[:, None]
  kept_images, kept_labels = tasks.class_balanced_prefix(images, labels, 10)
  # 10 = 4 + 3 + 3: the first class gets the remainder.
  expected = np.sort(np.concatenate(
      [np.nonzero(labels == c)[0][:n] for c, n in enumerate((4, 3, 3))]))
  np.testing.assert_array_equal(kept_images[:, 0], expected)
  np.testing.assert_array_equal(kept_labels, labels[expected])
  assert tasks.class_balanced_prefix(images, labels, 0)[1] is labels


def test_evaluation_subset_of_class_sorted_data_covers_every_class():
  # The offline CIFAR arrays are sorted by class; a leading slice of 2,000 test
  # images would hold two classes only.
  labels = np.repeat(np.arange(10), 1000)
  images = np.arange(10000)[:, None]
  sub_images, sub_labels = classification.subset(images, labels, 2000)
  counts = np.bincount(sub_labels, minlength=10)
  assert len(sub_labels) == 2000 and counts.min() > 150
  np.testing.assert_array_equal(labels[sub_images[:, 0]], sub_labels)
  assert classification.subset(images, labels, 0)[1] is labels


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


def _numpy_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels]


def test_shared_point_training_loss_is_measured_at_y(tmp_path):
  """The recorded y-loss: the shared point, averaged BN, eval mode, no augmentation."""
  config = configs.get_preset("fig1", "toy").runs["extrap_sgd"]
  config.probe_every_steps = 0
  config.num_steps = 3
  config.data.train_eval_size = 48
  config.train_eval_every_steps = 2
  setup = train.set_up(config)
  state = train.train_and_evaluate(config, tmp_path, setup=setup).state
  records = report.read_metrics(tmp_path)
  measured = [r for r in records if "shared_point_train_loss" in r]
  assert [r["step"] for r in measured] == [2, 3]
  assert all("online_train_loss" not in r for r in measured)

  stacked_y = state["opt_state"].shared_params   # (K, ...) per worker
  params = jax.tree.map(lambda x: np.asarray(x)[0], stacked_y)
  # y is the same on every worker, and differs from the points z they hold.
  jax.tree.map(lambda x: np.testing.assert_array_equal(
      np.asarray(x), np.broadcast_to(np.asarray(x)[0], x.shape)), stacked_y)
  assert any(not np.array_equal(np.asarray(z)[0], y) for z, y in zip(
      jax.tree.leaves(state["params"]), jax.tree.leaves(params)))
  batch_stats = jax.tree.map(lambda x: np.asarray(x).mean(0),
                             state["model_state"])
  task = setup.task
  images = (task.train_eval_images / 255.0 - np.asarray(task.mean)) / np.asarray(
      task.std)
  logits = task.model.apply({"params": params, **batch_stats},
                            images.astype(np.float32), train=False)
  losses = _numpy_cross_entropy(logits, task.train_eval_labels)
  np.testing.assert_allclose(measured[-1]["shared_point_train_loss"],
                             losses.mean(), rtol=2e-5)
  np.testing.assert_allclose(
      measured[-1]["shared_point_train_accuracy"],
      np.mean(np.argmax(logits, -1) == task.train_eval_labels))
  # With BatchNorm on the statistics of each local batch of B examples.
  # The batches are cut in a fixed random order, not the source's (which may
  # be sorted by class, making every batch one class).
  order = task.train_eval_order
  assert sorted(order) == list(range(48)) and list(order) != sorted(order)
  local_batch = config.workers.local_batch_size
  chunk_losses = []
  for start in range(0, 48, local_batch):
    chunk = order[start:start + local_batch]
    chunk_logits, _ = task.model.apply(
        {"params": params, **batch_stats}, images[chunk].astype(np.float32),
        train=True, mutable=list(batch_stats))
    chunk_losses.append(_numpy_cross_entropy(
        chunk_logits, task.train_eval_labels[chunk]))
  np.testing.assert_allclose(
      measured[-1]["shared_point_train_loss_batch_stats"],
      np.concatenate(chunk_losses).mean(), rtol=2e-5)
  # A fixed subset of the training set, the same for every seed.
  assert len(task.train_eval_labels) == 48
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["final_shared_point_train_loss"] == measured[-1][
      "shared_point_train_loss"]

  # The extrapolation ratio ‖z − y‖/‖Δy‖ is recorded at every step.
  ratios = [r["step"] for r in records if "extrapolation_ratio_max" in r]
  assert ratios == [1, 2, 3]


def test_validation_loss_is_measured_at_y_and_bleu_only_at_the_end(tmp_path):
  """EXTRAP-ADAM's validation loss: the shared point, no label smoothing, and
  with `data.bleu_at_every_eval=False` the test set decoded at the last
  evaluation only."""
  config = configs.get_preset("fig3", "toy").runs["extrap_adam_k4"]
  config.num_steps = 2
  config.num_evals = 2
  config.checkpoint_every_steps = 0
  config.data.bleu_at_every_eval = False
  setup = train.set_up(config)
  summary, state = train.train_and_evaluate(config, tmp_path, setup=setup)
  evaluations = [r for r in report.read_metrics(tmp_path) if "valid_loss" in r]
  assert [r["step"] for r in evaluations] == [1, 2]
  assert ["test_bleu" in r for r in evaluations] == [False, True]
  assert summary["final_test_bleu"] == evaluations[-1]["test_bleu"]
  assert summary["final_valid_loss"] == evaluations[-1]["valid_loss"]

  y = jax.tree.map(lambda x: np.asarray(x)[0], extrap_optax.evaluation_params(
      state["params"], state["opt_state"]))
  z = jax.tree.map(lambda x: np.asarray(x)[0], state["params"])
  sources, targets = setup.task.valid
  src = np.zeros((len(sources), max(map(len, sources))), np.int32)
  tgt = np.zeros((len(targets), max(map(len, targets))), np.int32)
  for i, (s, t) in enumerate(zip(sources, targets)):
    src[i, :len(s)], tgt[i, :len(t)] = s, t

  def validation_loss(params):
    """Token-mean cross-entropy over the non-pad validation targets."""
    logits = np.asarray(setup.task.model.apply(
        {"params": params}, src, tgt[:, :-1], train=False))
    labels = tgt[:, 1:]
    losses = _numpy_cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                  labels.reshape(-1))
    return losses[labels.reshape(-1) != 0].mean()

  np.testing.assert_allclose(evaluations[-1]["valid_loss"], validation_loss(y),
                             rtol=1e-5)
  assert abs(validation_loss(z) - validation_loss(y)) > 1e-4


def test_extrapolation_ratios_per_tensor_against_numpy():
  rng = np.random.default_rng(0)
  y0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,)),
        "c": np.zeros((2, 2))}
  y0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), y0)
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.05, momentum=0.0)
  state = tx.init(y0)
  params = y0
  for _ in range(2):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape),
                                               jnp.float32), params)
    grads["c"] = jnp.zeros((2, 2))          # a tensor that does not move
    updates, next_state = tx.update(grads, state, params)
    next_params = optax.apply_updates(params, updates)
    ratios = diagnostics.extrapolation_ratios(params, state, next_params,
                                        next_state)
    y, y_next = state.shared_params, next_state.shared_params
    expected = [np.linalg.norm(np.asarray(next_params[k]) - y_next[k])
                / np.linalg.norm(np.asarray(y_next[k]) - y[k])
                for k in ("a", "b")]
    np.testing.assert_allclose(ratios["extrapolation_ratio_median"],
                               np.median(expected), rtol=1e-5)
    np.testing.assert_allclose(ratios["extrapolation_ratio_max"],
                               np.max(expected), rtol=1e-5)
    params, state = next_params, next_state


def test_train_eval_size_needs_a_task_that_has_it(tmp_path):
  config = configs.get_preset("fig2", "toy").runs["extrap_sgd_k4"]
  config.data.train_eval_size = 10
  with pytest.raises(ValueError, match="data.train_eval_size"):
    train.set_up(config)
