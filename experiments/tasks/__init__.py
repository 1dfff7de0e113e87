"""The runner's tasks, one module each, behind one interface (`base.Task`).

- `classification`: CIFAR-10/100 with ResNet-20 or VGG-11;
- `language_model`: WikiText-2 with the 2-layer LSTM;
- `translation`: Multi30k en-de with the Transformer;
- `synthetic`: random data of each task's shapes (tests and toy runs).
"""

from __future__ import annotations

import ml_collections

import extrap_optax
from experiments.configs import base as config_base
from experiments.tasks.base import data_dir
from experiments.tasks.base import Task
from experiments.tasks.classification import class_balanced_prefix
from experiments.tasks.classification import Classification
from experiments.tasks.language_model import LanguageModel
from experiments.tasks.translation import Translation

TASKS: dict[str, type[Task]] = dict(zip(
    config_base.TASKS, (Classification, LanguageModel, Translation)))

__all__ = ["TASKS", "Task", "check_data", "class_balanced_prefix",
           "data_dir", "make_task"]


def _task_class(config: ml_collections.ConfigDict) -> type[Task]:
  if config.task not in TASKS:
    raise ValueError(f"Unknown task {config.task!r}; choose one of "
                     f"{', '.join(TASKS)}.")
  return TASKS[config.task]


def check_data(config: ml_collections.ConfigDict) -> None:
  """Checks that the files the run will read are there, without reading them.

  Raises:
    MissingDataError: the data directory or one of its files is missing; the
      message names the files and `data.data_dir` / $EXTRAP_OPTAX_DATA_DIR.
  """
  _task_class(config).check_data(config)


def make_task(config: ml_collections.ConfigDict,
              workers: extrap_optax.Workers) -> Task:
  """Builds the task `config.task` for `workers`.

  Raises:
    ValueError: an unknown task, or `data.train_eval_size` for a task that
      has no training-subset evaluation.
  """
  task_class = _task_class(config)
  if config.data.train_eval_size > 0 and not task_class.measures_train_subset:
    raise ValueError(
        f"data.train_eval_size={config.data.train_eval_size}, but task "
        f"{config.task!r} has no training-subset evaluation; set "
        "data.train_eval_size=0.")
  return task_class(config, workers)
