"""Checks a run configuration before anything is loaded or compiled.

`validate(config)` collects every bad field of a configuration and raises one
`ConfigError` that names each field, the value found and the fix, so a grid
of runs fails at once instead of after the first run's data loading and
compilation. The data files are checked by `experiments.tasks.check_data`.

The optimizer's fields are checked by the library itself: the method's
optimizer is built (`experiments.methods`), and the library's error, which
names its argument, is reported against the `optimizer.*` field behind it.
The method's choices (`optimizer.noise`, `optimizer.extrapolation_scaling`)
are the library's, and an optimizer field the method does not read is
refused (`configs.overrides.apply` switches methods with their fields).
"""

from __future__ import annotations

import numbers
import re
from typing import Any, Callable

import ml_collections

from experiments import methods
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
  choice("optimizer.method", tuple(methods.METHODS))
  method = methods.METHODS.get(config.optimizer.method)
  optimizer_problems = len(problems)
  if method is not None:
    for field, choices in method.choices.items():
      choice(f"optimizer.{field}", choices)
    for field in methods.foreign_fields(config.optimizer):
      problems.append(
          f"optimizer.{field}: not a field of optimizer.method="
          f"{method.name!r} (its fields: "
          f"{', '.join(sorted({**methods.COMMON_FIELDS, **method.fields}))}"
          "); remove it.")
    for field in sorted(set(method.fields) - set(config.optimizer.keys())):
      problems.append(f"optimizer.{field} is missing; optimizer.method="
                      f"{method.name!r} needs it (default "
                      f"{method.fields[field]!r}).")
  choice("schedule.name", base.SCHEDULES)
  choice("workers.backend", BACKENDS)

  positive_int = lambda v: _is_int(v) and v >= 1
  nonnegative_int = lambda v: _is_int(v) and v >= 0
  nonnegative = lambda v: _is_number(v) and v >= 0
  positive = lambda v: _is_number(v) and v > 0
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
  if (method is not None and len(problems) == optimizer_problems
      and _is_number(config.optimizer.base_learning_rate)):
    problem = _library_check(config)
    if problem:
      problems.append(problem)
  if problems:
    name = config.get("name", "")
    raise ConfigError(
        f"Invalid configuration{f' {name!r}' if name else ''} "
        f"({len(problems)} problem{'s' if len(problems) > 1 else ''}); fix "
        "these fields (--set field=value):\n  " + "\n  ".join(problems))


# The library's argument behind each `optimizer.*` field of another name.
_FIELD_OF_ARGUMENT = {"learning_rate": "base_learning_rate",
                      "scale": "extrapolation_scale",
                      "extrapolation_rate": "extrapolation_scale"}


def _library_check(config: ml_collections.ConfigDict) -> str:
  """The library's complaint about the optimizer of `config` ("" if none).

  The optimizer is built at a constant rate, for one worker: the library
  checks every hyperparameter when it is built, and its message names the
  argument, which is the `optimizer.*` field of that name.
  """
  opt = config.optimizer
  num_steps = config.num_steps or max(1, round(config.num_epochs))
  try:
    methods.build(config, lambda count: opt.base_learning_rate,
                  steps_per_epoch=1, num_steps=num_steps, axis_name=None)
  except (ValueError, TypeError) as error:
    message = str(error)
    named = re.match(r"`(\w+)`", message)
    field = named and _FIELD_OF_ARGUMENT.get(named.group(1), named.group(1))
    if field in opt:
      return f"optimizer.{field}={opt[field]!r}: {message}"
    return f"optimizer (method {opt.method!r}): {message}"
  return ""


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value
