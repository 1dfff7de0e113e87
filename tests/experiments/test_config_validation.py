"""Bad configurations fail before any data loading or compilation, naming the field."""

import re

import pytest

from experiments import configs
from experiments import main
from experiments import train
from experiments.configs import validation
from experiments.input_pipeline import common
from tests import contract


def _toy():
  return configs.get_preset("fig1", "toy").runs["extrap_sgd"]


# (field, bad value, words the message must contain).
BAD_FIELDS = [
    ("optimizer.method", "extrap_sdg", "optimizer.method='extrap_sdg' is unknown"),
    ("task", "segmentation", "task='segmentation' is unknown"),
    ("data.dataset", "imagenet", "data.dataset='imagenet' is unknown"),
    ("data.source", "jpg", "data.source='jpg' is unknown"),
    ("schedule.name", "cosine", "schedule.name='cosine' is unknown"),
    ("workers.backend", "pjit", "workers.backend='pjit' is unknown"),
    ("optimizer.extrapolation_scaling", "lars",
     "optimizer.extrapolation_scaling='lars' is unknown"),
    ("workers.num_workers", 0, "workers.num_workers=0: must be a positive"),
    ("workers.local_batch_size", -4, "workers.local_batch_size=-4"),
    ("num_epochs", -1.0, "num_epochs=-1.0: must be a non-negative"),
    ("num_steps", -3, "num_steps=-3"),
    ("optimizer.base_learning_rate", 0.0, "base_learning_rate=0.0: must be a positive"),
    # The library's own checks, against the field behind the argument.
    ("optimizer.momentum", 1.0,
     "optimizer.momentum=1.0: `momentum` must lie in [0, 1)"),
    ("optimizer.weight_decay", -1e-4,
     "optimizer.weight_decay=-0.0001: `weight_decay` must be non-negative"),
    ("optimizer.extrapolation_scale", -1.0,
     "optimizer.extrapolation_scale=-1.0: `scale` must be non-negative"),
    ("schedule.decay_fractions", (0.75, 0.5), "increasing fractions in (0, 1)"),
    ("schedule.decay_factor", 0.0, "schedule.decay_factor=0.0"),
    ("eval_every_steps", -1, "eval_every_steps=-1"),
    ("keep_checkpoints", 1, "keep_checkpoints=1: must be at least 2"),
    ("data.eval_batch_size", 0, "data.eval_batch_size=0"),
]


def _set(config, field, value):
  *path, last = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value


@pytest.mark.parametrize("field,value,message", BAD_FIELDS,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_bad_field_is_named_before_anything_compiles(field, value, message,
                                                     tmp_path):
  config = _toy()
  _set(config, field, value)
  with contract.count_compilations() as compilations:
    with pytest.raises(validation.ConfigError, match=re.escape(message)):
      train.set_up(config)
  assert compilations == []


def test_unknown_noise_is_named():
  config = _toy()
  config.optimizer.method = "noise_extrap_sgd"
  config.optimizer.noise = "pink"
  with pytest.raises(validation.ConfigError,
                     match="optimizer.noise='pink' is unknown; choose one of "
                     "uniform, gaussian"):
    validation.validate(config)


def test_all_problems_are_listed_at_once():
  config = _toy()
  config.optimizer.method = "sgd"
  config.num_epochs = -1.0
  config.workers.num_workers = 0
  with pytest.raises(validation.ConfigError, match="3 problems") as error:
    validation.validate(config)
  text = str(error.value)
  assert "optimizer.method" in text and "num_epochs" in text
  assert "workers.num_workers" in text and "--set" in text


def test_workers_must_split_evenly_over_processes():
  config = _toy()
  config.workers.num_workers = 6
  with pytest.raises(validation.ConfigError,
                     match="the 4 processes must hold the same number"):
    validation.validate(config, num_processes=4)
  validation.validate(config, num_processes=3)


def test_zero_length_run_is_refused():
  config = _toy()
  config.num_steps, config.num_epochs = 0, 0.0
  with pytest.raises(validation.ConfigError, match="both 0"):
    validation.validate(config)


@pytest.mark.parametrize("scale", configs.SCALES)
def test_every_preset_run_is_valid(scale):
  for name in configs.PRESETS:
    for run in configs.get_preset(name, scale).runs.values():
      validation.validate(run)


@pytest.mark.parametrize("preset,run,subdir,present,missing", [
    ("fig2", "extrap_sgd_k2", "wikitext-2", ["train.txt.gz", "test.txt.gz"],
     "valid.txt.gz"),
    ("fig3", "extrap_adam_k2", "multi30k", ["train.en.gz", "train.de.gz"],
     "val.en.gz"),
])
def test_data_directory_missing_a_file_is_named(preset, run, subdir, present,
                                                missing, tmp_path):
  config = configs.get_preset(preset, "toy").runs[run]
  config.data.source = "auto"
  config.data.data_dir = str(tmp_path)
  (tmp_path / subdir).mkdir()
  for name in present:
    (tmp_path / subdir / name).write_bytes(b"")
  with contract.count_compilations() as compilations:
    with pytest.raises(common.MissingDataError, match=f"missing.*{missing}"):
      train.set_up(config)
  assert compilations == []


def test_cifar_jpeg_source_without_its_file_is_named(tmp_path):
  config = _toy()
  config.data.source = "jpeg_full"
  config.data.data_dir = str(tmp_path)
  (tmp_path / "cifar10-jpeg").mkdir()
  with pytest.raises(common.MissingDataError,
                     match="missing.*cifar10_jpeg_full.npz"):
    train.set_up(config)


def test_command_line_exits_with_the_message(tmp_path):
  with pytest.raises(SystemExit, match="(?s)error: Invalid configuration.*"
                     "optimizer.momentum=1.5: `momentum` must lie in"):
    main.main(["--preset", "fig1", "--scale", "toy", "--runs-dir",
               str(tmp_path), "--set", "optimizer.momentum=1.5"])
