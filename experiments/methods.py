"""The training methods of the runner: one record per method, the only place that names them.

A `Method` says everything the rest of `experiments/` needs to know about a
method: its label, its own `optimizer.*` fields (and their defaults), how its
optax transformation is built from a run's configuration, its tuning grid
(App. C.1), and whether it is a local (communication-periodic) method, whose
workers hold different models between averaging rounds. Validation
(`configs/validation.py`), presets, studies and reports ask this module; a
new method is one more record in `METHODS`.

Every method also reads the fields of `COMMON_FIELDS` (`method`,
`base_learning_rate`, `grad_clip_norm`); an optimizer configuration holds
those and its method's own fields, nothing else (`optimizer_config`).

Extrapolation rates (App. C.1): γ̂_t = c·γ_t/K with c =
`optimizer.extrapolation_scale`, or, for the past gradient with
`optimizer.extrapolation_scaling = "trust_ratio"`, γ̂_t = c·(γ̃/K)·γ_t/γ_peak
with γ_peak = γ0·K·B/B_ref the peak of the Goyal et al. schedule.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import optax

import extrap_optax
from experiments import random_streams

# Read by every method (and by the trainer: the gradient clipping).
COMMON_FIELDS = {"method": "", "base_learning_rate": 0.1,
                 "grad_clip_norm": 0.0}
# The fields of the SGD family (`extrap_optax.minibatch_sgd` and its
# extrapolated and post-local variants); trust_coefficient 0 is no LARS.
SGD_FIELDS = {"momentum": 0.9, "weight_decay": 1e-4, "trust_coefficient": 0.02}
# The paper's Transformer values (App. C), not the library's defaults (optax's).
ADAM_FIELDS = {"b1": 0.9, "b2": 0.98, "eps": 1e-9}
# c in the extrapolation rate.
EXTRAPOLATION_FIELDS = {"extrapolation_scale": 1.0}
# Post-local SGD: t0 in epochs (negative: the first learning-rate decay), H.
LOCAL_FIELDS = {"local_start_epoch": -1.0, "sync_period": 8}



def _literal_choices(function: Callable[..., Any], parameter: str
                     ) -> tuple[str, ...]:
  """The values of a `Literal[...]`-annotated parameter of `function`."""
  annotation = inspect.signature(function).parameters[parameter].annotation
  if isinstance(annotation, str):  # Postponed (`from __future__` in the library).
    annotation = eval(annotation, {"Literal": typing.Literal})  # pylint: disable=eval-used
  return typing.get_args(annotation)


# The library's own choices, read from its signatures (declared there once).
PAST_GRADIENT_SCALINGS = _literal_choices(extrap_optax.extrap_sgd,
                                          "extrapolation_scaling")
NOISES = _literal_choices(extrap_optax.noise_extrap_sgd, "noise")

# App. C.1's grids.
LEARNING_RATES = (0.05, 0.1, 0.15, 0.2)
TRUST_COEFFICIENTS = (0.01, 0.02, 0.03)
EXTRAP_SCALES = (1.0, 2.0, 4.0)
NOISE_SCALES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
SYNC_PERIODS = (4, 8, 16)
SGD_GRID = {"optimizer.base_learning_rate": LEARNING_RATES,
            "optimizer.trust_coefficient": TRUST_COEFFICIENTS}


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a method's optimizer is built from.

  Attributes:
    config: the run configuration (`config.optimizer` holds the method's
      fields).
    learning_rate: the schedule γ_t.
    steps_per_epoch: training steps per epoch.
    num_steps: the run's length in steps.
    axis_name: the workers' axis name(s) (None: one worker).
  """
  config: ml_collections.ConfigDict
  learning_rate: optax.Schedule
  steps_per_epoch: int
  num_steps: int
  axis_name: Any


@dataclasses.dataclass(frozen=True)
class Method:
  """One training method of the runner.

  Attributes:
    name: the value of `optimizer.method`.
    label: how tables and figures name it.
    fields: its own `optimizer.*` fields (besides `COMMON_FIELDS`) and their
      defaults.
    build: the optax transformation of a run (`BuildContext`), per worker.
    grid: its tuning grid (App. C.1): dotted key -> values.
    choices: the fields that take one of a few names, and those names.
  """
  name: str
  label: str
  fields: Mapping[str, Any]
  build: Callable[[BuildContext], optax.GradientTransformation]
  grid: Mapping[str, tuple[Any, ...]]
  choices: Mapping[str, tuple[str, ...]] = dataclasses.field(
      default_factory=dict)

  def tuning_grid(self, optimizer: ml_collections.ConfigDict
                  ) -> dict[str, tuple[Any, ...]]:
    """The grid for a run with `optimizer` (no trust coefficient without LARS)."""
    return {key: values for key, values in self.grid.items()
            if key != "optimizer.trust_coefficient"
            or optimizer.get("trust_coefficient", 0) > 0}


def _sgd_args(context: BuildContext) -> dict[str, Any]:
  opt = context.config.optimizer
  return dict(momentum=opt.momentum, weight_decay=opt.weight_decay,
              trust_coefficient=opt.trust_coefficient or None,
              axis_name=context.axis_name)


def _adam_args(context: BuildContext) -> dict[str, Any]:
  opt = context.config.optimizer
  return dict(b1=opt.b1, b2=opt.b2, eps=opt.eps, axis_name=context.axis_name)


def extrapolation_rate(context: BuildContext) -> optax.Schedule:
  """γ̂_t of the method's `extrapolation_scale` c (and scaling, if any).

  "none": γ̂_t = c·γ_t/K. "trust_ratio" (the LARS-scaled past gradient,
  App. C.1): γ̂_t = c·(γ̃/K)·γ_t/γ_peak, following the warm-up as the LARS
  step does.

  Raises:
    ValueError: "trust_ratio" without LARS or without a Goyal et al. peak.
  """
  config, opt = context.config, context.config.optimizer
  num_workers = config.workers.num_workers
  if opt.get("extrapolation_scaling", "none") != "trust_ratio":
    return extrap_optax.extrapolation_rate_schedule(
        context.learning_rate, num_workers=num_workers,
        scale=opt.extrapolation_scale)
  if not opt.trust_coefficient:
    raise ValueError(
        "optimizer.extrapolation_scaling='trust_ratio' sizes the "
        "extrapolation as a LARS step, γ̂_t = c·(γ̃/K)·γ_t/γ_peak, and needs "
        "LARS: optimizer.trust_coefficient is 0. Set "
        "optimizer.trust_coefficient > 0 (the paper: 0.02) or "
        "optimizer.extrapolation_scaling='none'.")
  if config.schedule.name not in ("goyal", "constant"):
    raise ValueError(
        "optimizer.extrapolation_scaling='trust_ratio' divides by the peak "
        "of the Goyal et al. schedule (schedule.name 'goyal' or "
        f"'constant'), got schedule.name={config.schedule.name!r}.")
  local_batch = config.workers.local_batch_size
  reference_batch = config.schedule.reference_batch_size or local_batch
  peak = opt.base_learning_rate * num_workers * local_batch / reference_batch
  factor = opt.extrapolation_scale * opt.trust_coefficient / num_workers
  learning_rate = context.learning_rate
  return lambda count: factor * learning_rate(count) / peak


def local_start_step(context: BuildContext) -> int:
  """Post-local SGD's t0: `local_start_epoch`, else the first rate decay.

  Raises:
    ValueError: no `local_start_epoch` and a schedule without decay.
  """
  config = context.config
  start_epoch = config.optimizer.local_start_epoch
  if start_epoch >= 0:
    return round(start_epoch * context.steps_per_epoch)
  fractions = config.schedule.decay_fractions
  if config.schedule.name != "goyal" or not fractions:
    raise ValueError(
        "Post-local SGD starts at the first learning-rate decay by default, "
        "but this schedule has none: set optimizer.local_start_epoch.")
  # The boundary rule of `goyal_schedule`: the first step at or past f·T.
  return math.ceil(round(fractions[0] * context.num_steps, 6))


def averaged_past_gradient(context: extrap_optax.PerturbationContext
                           ) -> optax.Updates:
  """ζ^k_{t+1} = ḡ_t: every worker extrapolates along the averaged gradient.

  Then z^k_{t+1} = y_{t+1} − γ̂ ḡ_t is the same point on every worker: the
  optimistic (extra-gradient from the past) step of one large batch, where
  EXTRAP-SGD's own g^k_t gives each worker its own point.
  """
  return context.mean_grads


def _post_local(context: BuildContext,
                extrapolates: bool) -> optax.GradientTransformation:
  opt = context.config.optimizer
  extra = {}
  if extrapolates:
    extra = dict(extrapolation_rate=extrapolation_rate(context),
                 extrapolation_scaling=opt.extrapolation_scaling)
  return extrap_optax.post_local_sgd(
      context.learning_rate, start_step=local_start_step(context),
      sync_period=opt.sync_period, **extra, **_sgd_args(context))


MINIBATCH_SGD = Method(
    name="minibatch_sgd", label="mini-batch SGD", fields=SGD_FIELDS,
    build=lambda c: extrap_optax.minibatch_sgd(c.learning_rate, **_sgd_args(c)),
    grid=SGD_GRID)

EXTRAP_SGD = Method(
    name="extrap_sgd", label="EXTRAP-SGD",
    fields={**SGD_FIELDS, **EXTRAPOLATION_FIELDS,
            "extrapolation_scaling": "none"},
    build=lambda c: extrap_optax.extrap_sgd(
        c.learning_rate, extrapolation_rate=extrapolation_rate(c),
        extrapolation_scaling=c.config.optimizer.extrapolation_scaling,
        **_sgd_args(c)),
    grid={**SGD_GRID, "optimizer.extrapolation_scale": EXTRAP_SCALES},
    choices={"extrapolation_scaling": PAST_GRADIENT_SCALINGS})

EXTRAP_SGD_AVERAGED = Method(
    name="extrap_sgd_averaged", label="EXTRAP-SGD, averaged past gradient",
    fields={**SGD_FIELDS, **EXTRAPOLATION_FIELDS},
    build=lambda c: extrap_optax.extrapolated_sgd(
        c.learning_rate, perturbation=averaged_past_gradient,
        extrapolation_rate=extrapolation_rate(c), **_sgd_args(c)),
    grid={**SGD_GRID, "optimizer.extrapolation_scale": EXTRAP_SCALES})

NOISE_EXTRAP_SGD = Method(
    name="noise_extrap_sgd", label="extrapolated SGD with noise",
    fields={**SGD_FIELDS, **EXTRAPOLATION_FIELDS, "noise": "uniform"},
    build=lambda c: extrap_optax.noise_extrap_sgd(
        c.learning_rate, extrapolation_rate=extrapolation_rate(c),
        noise=c.config.optimizer.noise,
        seed=random_streams.stream_seed(c.config.seed, "noise"),
        **_sgd_args(c)),
    grid={**SGD_GRID, "optimizer.extrapolation_scale": NOISE_SCALES},
    choices={"noise": NOISES})

POST_LOCAL_SGD = Method(
    name="post_local_sgd", label="mini-batch SGD (with post-local SGD)",
    fields={**SGD_FIELDS, **LOCAL_FIELDS},
    build=lambda c: _post_local(c, extrapolates=False),
    grid={**SGD_GRID, "optimizer.sync_period": SYNC_PERIODS})

POST_LOCAL_EXTRAP_SGD = Method(
    name="post_local_extrap_sgd", label="EXTRAP-SGD (with post-local SGD)",
    fields={**SGD_FIELDS, **EXTRAPOLATION_FIELDS, **LOCAL_FIELDS,
            "extrapolation_scaling": "none"},
    build=lambda c: _post_local(c, extrapolates=True),
    grid={**SGD_GRID, "optimizer.extrapolation_scale": EXTRAP_SCALES,
          "optimizer.sync_period": SYNC_PERIODS},
    choices={"extrapolation_scaling": PAST_GRADIENT_SCALINGS})

# The paper tunes no rate for Adam's inverse-square-root schedule.
ADAM = Method(
    name="adam", label="Adam", fields=ADAM_FIELDS,
    build=lambda c: extrap_optax.adam(c.learning_rate, **_adam_args(c)),
    grid={})

EXTRAP_ADAM = Method(
    name="extrap_adam", label="EXTRAP-ADAM",
    fields={**ADAM_FIELDS, **EXTRAPOLATION_FIELDS},
    build=lambda c: extrap_optax.extrap_adam(
        c.learning_rate, extrapolation_rate=extrapolation_rate(c),
        **_adam_args(c)),
    grid={"optimizer.extrapolation_scale": EXTRAP_SCALES})

METHODS: dict[str, Method] = {m.name: m for m in (
    MINIBATCH_SGD, EXTRAP_SGD, EXTRAP_SGD_AVERAGED, NOISE_EXTRAP_SGD,
    POST_LOCAL_SGD, POST_LOCAL_EXTRAP_SGD, ADAM, EXTRAP_ADAM)}


def get(name: str) -> Method:
  """The method `name` (`optimizer.method`).

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  if name not in METHODS:
    raise ValueError(f"Unknown optimizer.method {name!r}; choose one of "
                     f"{', '.join(METHODS)}.")
  return METHODS[name]


def optimizer_config(name: str, **fields: Any) -> ml_collections.ConfigDict:
  """The `optimizer` block of method `name`: its defaults, updated by `fields`.

  Raises:
    ValueError: an unknown method, or a field the method does not have.
  """
  method = get(name)
  config = {**COMMON_FIELDS, **method.fields, "method": name}
  foreign = sorted(set(fields) - set(config))
  if foreign:
    raise ValueError(
        f"optimizer.{foreign[0]} is not a field of optimizer.method={name!r}; "
        f"its fields are {', '.join(sorted(config))}.")
  config.update(fields)
  return ml_collections.ConfigDict(config)


def switch_method(optimizer: ml_collections.ConfigDict,
                  name: str) -> ml_collections.ConfigDict:
  """`optimizer` changed to method `name`: shared fields keep their values.

  Fields the new method does not have are dropped; its other fields get
  their defaults.
  """
  known = {**COMMON_FIELDS, **get(name).fields}
  return optimizer_config(name, **{
      key: value for key, value in optimizer.items()
      if key in known and key != "method"})


def foreign_fields(optimizer: ml_collections.ConfigDict) -> list[str]:
  """The fields of `optimizer` its method does not read (sorted)."""
  known = {**COMMON_FIELDS, **get(optimizer.method).fields}
  return sorted(set(optimizer.keys()) - set(known))


def tuning_grid(config: ml_collections.ConfigDict
                ) -> dict[str, tuple[Any, ...]]:
  """The App. C.1 grid of a run's method: dotted key -> values.

  The learning rate is tuned for every SGD method, the trust coefficient when
  LARS is on, c of γ̂ = c·γ/K in {1, 2, 4} for the past-gradient methods and
  in {0.1, ..., 4} for the noise variants, and H in {4, 8, 16} for post-local
  SGD. Adam's inverse-square-root schedule has no tuned rate in the paper.
  """
  return get(config.optimizer.method).tuning_grid(config.optimizer)


def build(config: ml_collections.ConfigDict, learning_rate: optax.Schedule, *,
          steps_per_epoch: int, num_steps: int,
          axis_name: Any) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer.method` over the workers' `axis_name`."""
  return get(config.optimizer.method).build(BuildContext(
      config, learning_rate, steps_per_epoch, num_steps, axis_name))
