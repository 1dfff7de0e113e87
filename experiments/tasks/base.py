"""What a task gives the trainer: data, model, per-worker loss, evaluation.

The trainer (`experiments.train`) is task-agnostic; a `Task` gives it

- `init(rng)`: one worker's parameters and model state (BatchNorm statistics,
  the LSTM's hidden state, or nothing);
- `loss(params, model_state, batch, rng, step)`: one worker's training loss on
  its local batch, with the new model state and extra metrics;
- `train_batch(step)`: the global step's (K, B, ...) batch, placed for
  `Workers.map`; a pure function of (seed, step), so a resumed run sees the
  same data as an uninterrupted one;
- `evaluate(params, model_state, final=...)`: test metrics at the shared
  point, with the model state averaged over workers; `final` is True at the
  run's last evaluation, where a task may add metrics too costly to measure
  at every one (translation's test BLEU with `data.bleu_at_every_eval=False`);
- `evaluate_train(params, model_state)`, where `measures_train_subset`: the
  same point's loss on a fixed training subset (`data.train_eval_size`
  examples, eval mode, no augmentation), the training loss the methods are
  compared by;
- `check_data(config)`: whether the files the run will read are there,
  before anything is read.
"""

from __future__ import annotations

import abc
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

import extrap_optax
from experiments.input_pipeline import common

Batch = Any
Metrics = dict[str, jax.Array]


class Task(abc.ABC):
  """A task of the trainer (see the module docstring).

  Attributes:
    steps_per_epoch: training steps per epoch.
    examples_per_step: images, tokens or sentence pairs per global step.
    throughput_unit: how throughput is shown, e.g. "img/s".
    main_metric: the metric the report tabulates.
    higher_is_better: whether `main_metric` is better higher.
    data_source: which data the run read (e.g. "cifar10_jpeg_full (JPEG
      quality 75)"); "" where there is one source.
    measures_train_subset: the task has `evaluate_train`.
  """

  steps_per_epoch: int
  examples_per_step: int
  throughput_unit: str
  main_metric: str
  higher_is_better: bool
  data_source: str = ""
  measures_train_subset: bool = False

  @abc.abstractmethod
  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    """Loads the data and builds the model for `workers`."""

  @staticmethod
  @abc.abstractmethod
  def check_data(config: ml_collections.ConfigDict) -> None:
    """Raises `MissingDataError` naming a missing file the run would read."""

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """One worker's parameters and model state."""

  @abc.abstractmethod
  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics]]:
    """One worker's loss, with its new model state and metrics."""

  @abc.abstractmethod
  def train_batch(self, step: int) -> Batch:
    """The global step's batch, placed for `Workers.map`."""

  @abc.abstractmethod
  def evaluate(self, params: Any, model_state: Any, *,
               final: bool = True) -> dict[str, float]:
    """Test (or validation) metrics of one model."""

  def evaluate_train(self, params: Any, model_state: Any) -> dict[str, float]:
    """The model's loss on the fixed training subset (`measures_train_subset`)."""
    raise NotImplementedError(
        f"{type(self).__name__} has no training-subset evaluation; set "
        "data.train_eval_size=0.")


def data_dir(config: ml_collections.ConfigDict) -> pathlib.Path | None:
  """The local data root: `config.data.data_dir`, else $EXTRAP_OPTAX_DATA_DIR."""
  value = config.data.data_dir or os.environ.get(common.DATA_DIR_ENV, "")
  return pathlib.Path(value) if value else None


def local_eval_mesh() -> Mesh:
  """This process's devices as one "batch" axis, for evaluation batches."""
  return Mesh(np.array(jax.local_devices()), ("batch",))


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
