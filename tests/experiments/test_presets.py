"""Every preset builds at every scale, and each trains a few steps at toy size."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax

from experiments import configs
from experiments import main
from experiments import methods
from experiments import schedules
from experiments import train
from experiments.configs import overrides
from experiments.configs import paper_results

# One run per preset trains at toy size; together they cover the three tasks,
# ResNet and VGG without BatchNorm, the probe, every kind of perturbation
# (past gradient, filter-wise noise, stochastic-gradient noise, SmoothOut's
# shared noise is the same code path), post-local SGD with and without
# extrapolation, EXTRAP-ADAM, and virtual workers (K=16 on 8 devices). Figure 1
# trains end to end through the command line in test_train.py.
TOY_RUNS = {
    "fig2": "extrap_sgd_k4",
    "fig3": "extrap_adam_k4",
    "fig4": "post_local_sgd_e1",
    "table1": "vgg11_extrap_stochastic_noise",
    "table2": "cifar100_extrap_sgd_post_local",
    "table3": "extrap_sgd_b2_k16",
}


@pytest.mark.parametrize("scale", configs.SCALES)
@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_preset_builds_its_optimizers(name, scale):
  preset = configs.get_preset(name, scale)
  assert preset.runs and preset.seeds
  for run_name, config in preset.runs.items():
    assert config.name == run_name and config.preset == name
    assert config.row and config.column
    steps_per_epoch = 20
    num_steps = schedules.total_steps(config, steps_per_epoch)
    schedule = schedules.make_schedule(config, steps_per_epoch, num_steps)
    assert math.isfinite(float(schedule(0))) and float(schedule(0)) > 0
    methods.build(config, schedule, steps_per_epoch=steps_per_epoch,
                  num_steps=num_steps, axis_name=("devices", "workers"))


@pytest.mark.parametrize("name", sorted(paper_results.PAPER_RESULTS))
def test_paper_numbers_match_preset_cells(name):
  preset = configs.get_preset(name, "paper")
  cells = {(c.row, c.column) for c in preset.runs.values()}
  assert set(paper_results.PAPER_RESULTS[name]) <= cells


def test_paper_scale_is_the_published_setting():
  table1 = configs.get_preset("table1", "paper").runs["resnet20_extrap_sgd"]
  assert table1.workers.num_workers == 32
  assert table1.workers.local_batch_size == 256
  assert table1.num_epochs == 300
  assert table1.optimizer.trust_coefficient == 0.02
  fig4 = configs.get_preset("fig4", "paper").runs
  assert {c.workers.num_workers for c in fig4.values()} == {64}


def test_overrides_parse_and_check_types():
  config = configs.get_preset("fig1", "toy").runs["extrap_sgd"]
  config = overrides.apply(config, overrides.parse([
      "optimizer.base_learning_rate=1", "schedule.decay_fractions=(0.3, 0.6)",
      "data.source=jpeg", "model.kwargs.depth=14"]))
  assert config.optimizer.base_learning_rate == 1.0
  assert config.schedule.decay_fractions == (0.3, 0.6)
  assert config.data.source == "jpeg"
  assert config.model.kwargs.depth == 14
  with pytest.raises(ValueError, match="optimizer.learning_rate is not a field "
                     "of optimizer.method='extrap_sgd'"):
    overrides.apply(config, overrides.parse(["optimizer.learning_rate=0.1"]))
  with pytest.raises(ValueError, match="Unknown config field 'data.sorce'"):
    overrides.apply(config, overrides.parse(["data.sorce=tfds"]))
  with pytest.raises(TypeError):
    overrides.apply(config, overrides.parse(["workers.num_workers=many"]))


def test_sweep_dry_run_lists_the_paper_grid(capsys, tmp_path):
  assert main.main(["sweep", "--preset", "table1", "--scale", "paper",
                    "--only", "resnet20_extrap_sgd",
                    "resnet20_extrap_uniform_noise", "--runs-dir",
                    str(tmp_path), "--dry-run"]) == 0
  out = capsys.readouterr().out
  # lr x trust x c, three seeds: EXTRAP-SGD 4*3*3, uniform noise 4*3*6.
  assert f"{(36 + 72) * 3} runs." in out
  assert "base_learning_rate=0.15,trust_coefficient=0.03," in out
  assert "extrapolation_scale=0.25" in out
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", sorted(TOY_RUNS))
def test_toy_run_trains(name, tmp_path):
  config = configs.get_preset(name, "toy").runs[TOY_RUNS[name]]
  if config.workers.num_workers > len(jax.devices()):
    assert config.workers.num_workers % len(jax.devices()) == 0
  config.checkpoint_every_steps = 0
  summary = train.train_and_evaluate(config, tmp_path).summary
  assert summary["status"] == "completed"
  assert summary["steps"] == config.num_steps
  assert math.isfinite(summary["final_online_train_loss"])
  assert math.isfinite(summary[f"final_{summary['main_metric']}"])
  for artifact in ("config.json", "metrics.jsonl", "summary.json",
                   "curves.png", "tb"):
    assert (tmp_path / artifact).exists(), artifact



def _adam_trajectory(tx, num_steps=6):
  """The shared point after each step, on gradients that change every step."""
  params = {"x": jnp.linspace(-1.0, 1.0, 4)}
  state = tx.init(params)
  for t in range(num_steps):
    grads = {"x": 1e-4 * jnp.sin(3.0 * jnp.linspace(-1.0, 1.0, 4) + t)}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(extrap_optax.evaluation_params(params, state)["x"])


@pytest.mark.parametrize("method", ["adam", "extrap_adam"])
def test_transformer_presets_keep_the_paper_adam_constants(method):
  """The library's Adam defaults are optax's; the presets set App. C's β2 = 0.98,
  ε = 1e-9, so the Transformer's shared point steps as optax.adam with them."""
  config = configs.get_preset("fig3", "small").runs[f"{method}_k2"]
  tx = methods.build(config, lambda count: 1e-3, steps_per_epoch=20,
                     num_steps=100, axis_name=None)
  got = _adam_trajectory(tx)
  paper = _adam_trajectory(optax.adam(1e-3, b1=0.9, b2=0.98, eps=1e-9))
  np.testing.assert_allclose(got, paper, rtol=1e-6)
  assert np.max(np.abs(got - _adam_trajectory(optax.adam(1e-3)))) > 1e-6
