"""Checks a run configuration before anything is loaded or compiled.

`validate(config)` collects every bad field of a configuration and raises one
`ConfigError` that names each field, the value found and the fix, so a grid
of runs fails at once instead of after the first run's data loading and
compilation. The data files are checked by `experiments.tasks.check_data`.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import ml_collections

from experiments.configs import base

DATASETS = {"classification": ("cifar10", "cifar100"),
            "language_model": ("wikitext2",),
            "translation": ("multi30k",)}
BACKENDS = ("shard_map", "pmap", "vmap")


class ConfigError(ValueError):
  """One or more configuration fields are invalid."""


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict,
             num_processes: int = 1) -> None:
  """Raises `ConfigError` listing every invalid field of `config`.

  Args:
    config: a run configuration (`experiments.configs.base.get_config`).
    num_processes: the number of JAX processes the run will use.

  Raises:
    ConfigError: one line per invalid field, with the fix.
  """
  problems: list[str] = []

  def choice(field: str, choices: tuple[str, ...]) -> None:
    value = _get(config, field)
    if value not in choices:
      problems.append(f"{field}={value!r} is unknown; choose one of "
                      f"{', '.join(choices)}.")

  def check(field: str, is_valid: Callable[[Any], bool], wanted: str) -> None:
    value = _get(config, field)
    try:
      valid = is_valid(value)
    except TypeError:
      valid = False
    if not valid:
      problems.append(f"{field}={value!r}: must be {wanted}.")

  choice("task", base.TASKS)
  if config.task in DATASETS:
    choice("data.dataset", DATASETS[config.task])
  choice("data.source", base.DATA_SOURCES)
  choice("optimizer.method", base.METHODS)
  if config.optimizer.method == "noise_extrap_sgd":
    choice("optimizer.noise", base.NOISES)
  choice("optimizer.extrapolation_scaling", base.EXTRAPOLATION_SCALINGS)
  choice("schedule.name", base.SCHEDULES)
  choice("workers.backend", BACKENDS)

  positive_int = lambda v: _is_int(v) and v >= 1
  nonnegative_int = lambda v: _is_int(v) and v >= 0
  nonnegative = lambda v: _is_number(v) and v >= 0
  positive = lambda v: _is_number(v) and v > 0
  unit_interval = lambda v: _is_number(v) and 0 <= v < 1
  check("workers.num_workers", positive_int, "a positive integer (K)")
  check("workers.local_batch_size", positive_int,
        "a positive integer (B, per worker)")
  num_workers = config.workers.num_workers
  if (_is_int(num_workers) and num_workers >= 1
      and num_workers % num_processes):
    problems.append(
        f"workers.num_workers={num_workers}: the {num_processes} processes "
        f"must hold the same number of workers each; use a multiple of "
        f"{num_processes}.")
  check("seed", nonnegative_int, "a non-negative integer")
  check("num_epochs", nonnegative, "a non-negative number of epochs")
  check("num_steps", nonnegative_int,
        "a non-negative integer (0: use num_epochs)")
  if (_is_number(config.num_epochs) and _is_int(config.num_steps)
      and config.num_epochs <= 0 and config.num_steps <= 0):
    problems.append("num_epochs and num_steps are both 0: set one of them "
                    "to the run's length.")
  check("optimizer.base_learning_rate", positive, "a positive rate")
  check("optimizer.momentum", unit_interval, "in [0, 1)")
  check("optimizer.weight_decay", nonnegative, "non-negative")
  check("optimizer.trust_coefficient", nonnegative,
        "non-negative (0: no LARS)")
  check("optimizer.extrapolation_scale", nonnegative,
        "non-negative (c in the extrapolation rate)")
  check("optimizer.sync_period", positive_int,
        "a positive integer (post-local SGD's H)")
  check("optimizer.b1", unit_interval, "in [0, 1)")
  check("optimizer.b2", unit_interval, "in [0, 1)")
  check("optimizer.eps", nonnegative, "non-negative")
  check("optimizer.grad_clip_norm", nonnegative, "non-negative (0: off)")
  check("schedule.warmup_epochs", nonnegative, "a non-negative number")
  check("schedule.decay_fractions",
        lambda v: all(_is_number(f) and 0 < f < 1 for f in v)
        and list(v) == sorted(v), "increasing fractions in (0, 1)")
  check("schedule.decay_factor", lambda v: _is_number(v) and 0 < v <= 1,
        "in (0, 1]")
  check("schedule.reference_batch_size", nonnegative_int,
        "a non-negative integer (0: the local batch)")
  check("schedule.scale", positive, "positive")
  for field in ("log_every_steps", "eval_every_steps",
                "train_eval_every_steps", "checkpoint_every_steps",
                "probe_every_steps", "data.train_size", "data.eval_size",
                "data.train_eval_size"):
    check(field, nonnegative_int, "a non-negative integer (0: off / all)")
  check("num_evals", positive_int, "a positive integer")
  check("keep_checkpoints", lambda v: _is_int(v) and v >= 2,
        "at least 2 (a damaged newest checkpoint falls back to the previous)")
  check("data.eval_batch_size", positive_int, "a positive integer")
  check("probe_num_steps", positive_int, "a positive integer")
  check("probe_step_fraction", positive, "positive")
  if problems:
    name = config.get("name", "")
    raise ConfigError(
        f"Invalid configuration{f' {name!r}' if name else ''} "
        f"({len(problems)} problem{'s' if len(problems) > 1 else ''}); fix "
        "these fields (--set field=value):\n  " + "\n  ".join(problems))


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value
