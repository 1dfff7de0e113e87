"""Learning-rate schedules of the paper's experiments (paper App. C; see :ref:`schedules`).

Every schedule is a plain `optax.Schedule`: a jit-able function of the step
count built from `jnp` operations, so it can be given to any optax factory or to
`optax.inject_hyperparams`. The count is the number of updates already taken,
the convention of `optax.scale_by_learning_rate`: step 0 is the first update.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import optax

from extrap_optax._src import validation


def _check_positive_int(name: str, value: Any) -> None:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (
      value < 1):
    raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_positive(name: str, value: Any) -> None:
  if validation.is_concrete_number(value) and value <= 0:
    raise ValueError(f"`{name}` must be positive, got {value!r}.")


def _warmup_then_steps(
    base_learning_rate: float,
    peak_learning_rate: float,
    warmup_steps: int,
    boundaries: Sequence[int],
    decay_factor: float,
) -> optax.Schedule:
  """Linear warmup base -> peak, then the peak times decay_factor per boundary."""

  def schedule(count):
    count = jnp.asarray(count)
    num_decays = sum((count >= b).astype(jnp.int32) for b in boundaries)
    lr = peak_learning_rate * jnp.power(decay_factor, num_decays)
    if warmup_steps:
      warm = base_learning_rate + (
          peak_learning_rate - base_learning_rate) * count / warmup_steps
      lr = jnp.where(count < warmup_steps, warm, lr)
    return lr

  return schedule


def _goyal_peak_and_warmup(
    base_learning_rate, num_workers, local_batch_size, reference_batch_size,
    steps_per_epoch, warmup_epochs):
  """Validates the shared arguments; returns (peak lr, warmup steps)."""
  _check_positive("base_learning_rate", base_learning_rate)
  _check_positive_int("num_workers", num_workers)
  _check_positive_int("local_batch_size", local_batch_size)
  if reference_batch_size is None:
    reference_batch_size = local_batch_size
  _check_positive_int("reference_batch_size", reference_batch_size)
  _check_positive_int("steps_per_epoch", steps_per_epoch)
  if not validation.is_concrete_number(warmup_epochs) or warmup_epochs < 0:
    raise ValueError(
        f"`warmup_epochs` must be a number >= 0, got {warmup_epochs!r} (the "
        "paper warms up for 5 epochs; 0 disables the warmup).")
  peak = (base_learning_rate * num_workers * local_batch_size
          / reference_batch_size)
  return peak, math.floor(warmup_epochs * steps_per_epoch + 0.5)


def goyal_schedule(
    base_learning_rate: float,
    *,
    num_workers: int,
    local_batch_size: int,
    reference_batch_size: int | None = None,
    steps_per_epoch: int,
    warmup_epochs: float = 5,
    total_steps: int,
    decay_fractions: Sequence[float] = (0.5, 0.75),
    decay_factor: float = 0.1,
) -> optax.Schedule:
  r"""Linear scaling, gradual warmup and step decay (Goyal et al., 2017).

  With :math:`\gamma_0` = `base_learning_rate`, :math:`K` workers of local
  batch :math:`B` and reference batch :math:`B_\text{ref}`, the peak is

  .. math:: \gamma = \gamma_0 \cdot K B / B_\text{ref}

  (:math:`K \gamma_0` with the default :math:`B_\text{ref} = B`). Over the
  first :math:`W` = `warmup_epochs` · `steps_per_epoch` steps (rounded half
  up) the rate grows linearly per step from :math:`\gamma_0` (unscaled) to
  :math:`\gamma`,

  .. math:: \gamma_s = \gamma_0 + (\gamma - \gamma_0)\, s / W, \quad s < W,

  the increment :math:`(K\gamma_0 - \gamma_0) / (H N / (K B))` per iteration of
  the paper's App. C (:math:`H` warmup epochs, :math:`N` samples). From step
  :math:`W` on it is :math:`\gamma` times `decay_factor` for every boundary
  passed: the boundary of fraction :math:`f` is the first step
  :math:`s \ge f \cdot` `total_steps`, i.e. the step at which the model has
  accessed the fraction :math:`f` of its training samples (the paper decays by
  10 at 50% and 75%). `decay_fractions=()` keeps :math:`\gamma` after the
  warmup (the optimisation-speed figures and WikiText-2); see
  `constant_after_warmup`. Steps past `total_steps` keep the last value.

  Args:
    base_learning_rate: :math:`\gamma_0`, the tuned rate for one worker's
      batch (the paper tunes it in {0.05, 0.1, 0.15, 0.2}).
    num_workers: :math:`K`.
    local_batch_size: :math:`B`, each worker's batch.
    reference_batch_size: :math:`B_\text{ref}`, the batch for which
      `base_learning_rate` was tuned; default :math:`B`.
    steps_per_epoch: optimiser steps per epoch, :math:`N / (K B)`.
    warmup_epochs: :math:`H` (5 in the paper); 0 starts at the peak.
    total_steps: the steps of the whole run.
    decay_fractions: increasing fractions in (0, 1) of `total_steps`.
    decay_factor: the multiplier at each boundary, in (0, 1].

  Returns:
    An `optax.Schedule` of the step count.

  Raises:
    ValueError: for non-positive sizes, a warmup longer than `total_steps`,
      fractions outside (0, 1), not increasing, or falling inside the warmup.

  References:
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`__, 2017.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §5 and App. C.

  Examples:
    :math:`\gamma_0 = 0.1` for one worker's batch, :math:`K = 4`: a warm-up
    over 2 steps from 0.1 to 0.4, then 0.4, decayed 10× at 50% and 75% of 8
    steps.

    >>> import extrap_optax
    >>> schedule = extrap_optax.goyal_schedule(
    ...     0.1, num_workers=4, local_batch_size=32, steps_per_epoch=2,
    ...     warmup_epochs=1, total_steps=8)
    >>> print([round(float(schedule(step)), 4) for step in range(8)])
    [0.1, 0.25, 0.4, 0.4, 0.04, 0.04, 0.004, 0.004]
  """
  peak, warmup_steps = _goyal_peak_and_warmup(
      base_learning_rate, num_workers, local_batch_size, reference_batch_size,
      steps_per_epoch, warmup_epochs)
  _check_positive_int("total_steps", total_steps)
  if warmup_steps > total_steps:
    raise ValueError(
        f"The warmup ({warmup_epochs} epochs = {warmup_steps} steps) is longer "
        f"than `total_steps` = {total_steps}: lower `warmup_epochs` or raise "
        "`total_steps`.")
  decay_fractions = tuple(decay_fractions)
  if not all(validation.is_concrete_number(f) and 0 < f < 1
             for f in decay_fractions):
    raise ValueError(
        f"`decay_fractions` must lie in (0, 1), got {decay_fractions}; e.g. "
        "(0.5, 0.75) decays at 50% and 75% of `total_steps`.")
  if any(a >= b for a, b in zip(decay_fractions, decay_fractions[1:])):
    raise ValueError(
        f"`decay_fractions` must be strictly increasing, got {decay_fractions}.")
  if not (validation.is_concrete_number(decay_factor) and
          0 < decay_factor <= 1):
    raise ValueError(
        f"`decay_factor` must lie in (0, 1], got {decay_factor!r} (the paper "
        "uses 0.1).")
  # round(..., 6) drops binary noise such as 0.7 * 10 = 7.000000000000001
  # before the ceiling.
  boundaries = [math.ceil(round(f * total_steps, 6)) for f in decay_fractions]
  if boundaries and boundaries[0] < warmup_steps:
    raise ValueError(
        f"`decay_fractions`={decay_fractions} put a decay at step "
        f"{boundaries[0]}, inside the warmup of {warmup_steps} steps: use later "
        "fractions, a shorter warmup or more `total_steps`.")
  return _warmup_then_steps(
      base_learning_rate, peak, warmup_steps, boundaries, decay_factor)


def constant_after_warmup(
    base_learning_rate: float,
    *,
    num_workers: int,
    local_batch_size: int,
    reference_batch_size: int | None = None,
    steps_per_epoch: int,
    warmup_epochs: float = 5,
) -> optax.Schedule:
  r"""`goyal_schedule` without decay: warm-up to :math:`\gamma`, then constant.

  .. math::

    \gamma_s = \gamma_0 + (\gamma - \gamma_0)\, s / W \ \ (s < W), \qquad
    \gamma_s = \gamma = \gamma_0 K B / B_\text{ref} \ \ (s \ge W).

  The schedule of the paper's optimisation-speed experiments (Figure 1a) and
  of WikiText-2 (Figure 2).

  Args:
    base_learning_rate: :math:`\gamma_0`, as in `goyal_schedule`.
    num_workers: :math:`K`.
    local_batch_size: :math:`B`.
    reference_batch_size: :math:`B_\text{ref}`; default :math:`B`.
    steps_per_epoch: optimiser steps per epoch.
    warmup_epochs: :math:`H`, so :math:`W` = `warmup_epochs` ·
      `steps_per_epoch` steps (rounded half up); 0 starts at the peak.

  Returns:
    An `optax.Schedule` of the step count.

  Raises:
    ValueError: for non-positive sizes or a negative warm-up.

  References:
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`__, 2017.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, Figure 1 and App. C.

  Examples:
    >>> import extrap_optax
    >>> schedule = extrap_optax.constant_after_warmup(
    ...     0.1, num_workers=8, local_batch_size=256, steps_per_epoch=2,
    ...     warmup_epochs=2)
    >>> print([round(float(schedule(step)), 4) for step in range(6)])
    [0.1, 0.275, 0.45, 0.625, 0.8, 0.8]
  """
  peak, warmup_steps = _goyal_peak_and_warmup(
      base_learning_rate, num_workers, local_batch_size, reference_batch_size,
      steps_per_epoch, warmup_epochs)
  return _warmup_then_steps(base_learning_rate, peak, warmup_steps, (), 1.0)


def inverse_sqrt_schedule(
    d_model: int,
    *,
    global_batch_size: int,
    reference_batch_size: int = 64,
    reference_warmup_steps: int = 4000,
    scale: float = 1.0,
) -> optax.Schedule:
  r"""The Transformer's inverse-square-root schedule, warmup scaled by batch.

  .. math::

    \gamma(s) = c \cdot d_\text{model}^{-1/2}
      \min\left(s^{-1/2},\ s \, w^{-3/2}\right),
    \qquad
    w = \max\left(1,\ \mathrm{round}\left(
      w_\text{ref} B_\text{ref} / B_\text{global}\right)\right),

  (Vaswani et al., 2017), with the paper's warmup of 4000 steps at batch 64
  "linearly scaled down by the global mini-batch size" (App. C); rounding is
  half up. The rate peaks at :math:`s = w`.

  The formula is 0 at :math:`s = 0`, which would waste the first update, so
  :math:`s` is the step count plus one: the first update (count 0) uses
  :math:`\gamma(1)`, the peak is at count :math:`w - 1`. This is the
  convention of the reference implementations that start their step counter at
  one (tensor2tensor, the Annotated Transformer).

  Args:
    d_model: the model width.
    global_batch_size: :math:`B_\text{global}`, summed over workers.
    reference_batch_size: :math:`B_\text{ref}` (64 in the paper).
    reference_warmup_steps: :math:`w_\text{ref}` (4000 in the paper).
    scale: :math:`c`, a multiplier on the whole schedule.

  Returns:
    An `optax.Schedule` of the step count.

  Raises:
    ValueError: for a non-positive size, warm-up or `scale`.

  References:
    Vaswani et al., `Attention Is All You Need
    <https://arxiv.org/abs/1706.03762>`__, 2017, §5.3.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, App. C.

  Examples:
    With a global batch of 1,280 the warm-up is 4000 · 64 / 1280 = 200 steps:

    >>> import extrap_optax
    >>> schedule = extrap_optax.inverse_sqrt_schedule(
    ...     256, global_batch_size=1280)
    >>> peak = 256 ** -0.5 * 200 ** -0.5
    >>> print(round(float(schedule(199)) / peak, 4))   # count 199 is s = 200
    1.0
    >>> print(round(float(schedule(799)) / peak, 4))   # s = 800: (200/800)^0.5
    0.5
  """
  _check_positive_int("d_model", d_model)
  _check_positive_int("global_batch_size", global_batch_size)
  _check_positive_int("reference_batch_size", reference_batch_size)
  _check_positive_int("reference_warmup_steps", reference_warmup_steps)
  _check_positive("scale", scale)
  warmup_steps = max(1, math.floor(
      reference_warmup_steps * reference_batch_size / global_batch_size + 0.5))
  factor = scale * d_model ** -0.5

  def schedule(count):
    s = jnp.asarray(count, jnp.float32) + 1
    return factor * jnp.minimum(jnp.reciprocal(jnp.sqrt(s)),
                                s * warmup_steps ** -1.5)

  return schedule


def extrapolation_rate_schedule(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_workers: int,
    scale: float = 1.0,
) -> optax.ScalarOrSchedule:
  r"""The extrapolation step :math:`\hat\gamma_t = c \, \gamma_t / K`.

  The paper sets :math:`\hat\gamma \approx \gamma / K` and tunes :math:`c` in
  {1, 2, 4} (EXTRAP-SGD, EXTRAP-ADAM) or {0.1, 0.25, 0.5, 1, 2, 4} (noise
  variants), App. C.1. **Choice**: following a schedule :math:`\gamma_t`, the
  extrapolation warms up and decays with it (see :ref:`extrapolation-rate`).

  The convergence theory (Theorem 4.4) allows :math:`\hat\gamma \le
  \frac{u^2}{(1-u)^2}\gamma` for a small enough :math:`\gamma`, which
  :math:`\gamma/K` satisfies for :math:`u \ge 1/2`; at practical learning
  rates a much larger :math:`\hat\gamma` can fail (see `extrap_sgd`).

  Args:
    learning_rate: :math:`\gamma_t`, a float or an `optax.Schedule`.
    num_workers: :math:`K`.
    scale: :math:`c`.

  Returns:
    A float for a float `learning_rate`, else an `optax.Schedule`.

  Raises:
    ValueError: for a negative `learning_rate` or `scale`, or a non-positive
      `num_workers`.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.1, Remark 4.5 and
    App. C.1.

  Examples:
    >>> import extrap_optax
    >>> extrap_optax.extrapolation_rate_schedule(0.8, num_workers=8, scale=2.0)
    0.2
    >>> schedule = extrap_optax.extrapolation_rate_schedule(
    ...     extrap_optax.constant_after_warmup(
    ...         0.1, num_workers=8, local_batch_size=256, steps_per_epoch=1,
    ...         warmup_epochs=1),
    ...     num_workers=8)
    >>> print([round(float(schedule(step)), 4) for step in range(2)])
    [0.0125, 0.1]
  """
  validation.check_non_negative("learning_rate", learning_rate)
  _check_positive_int("num_workers", num_workers)
  validation.check_non_negative("scale", scale)
  if callable(learning_rate):
    return lambda count: scale * learning_rate(count) / num_workers
  return scale * learning_rate / num_workers
