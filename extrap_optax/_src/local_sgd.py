"""Local-step optimizers: post-local SGD (paper Algorithm 2) and DiLoCo, with or without extrapolation.

Both are `extrapolate` with a local communication policy
(`periodic_averaging`, `periodic_outer_step`); these are the named shortcuts.
"""

from __future__ import annotations

from typing import Literal

import optax

from extrap_optax._src import communication
from extrap_optax._src import extrapolation
from extrap_optax._src import perturbations
from extrap_optax._src import sgd
from extrap_optax._src import validation

ScalarOrSchedule = extrapolation.ScalarOrSchedule


def post_local_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    start_step: int,
    sync_period: int,
    extrapolation_rate: ScalarOrSchedule = 0.0,
    perturbation: perturbations.Perturbation | None = None,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: sgd.MaskOrFn = None,
    trust_coefficient: float | None = None,
    extrapolation_scaling: Literal["none", "trust_ratio"] = "none",
    axis_name: validation.AxisName | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Post-local SGD, optionally with extrapolation (paper App. D.1, Algorithm 2).

  Steps :math:`t < t_0` are mini-batch SGD (or EXTRAP-SGD): one gradient
  `pmean`. From :math:`t_0` on, each worker steps its own model :math:`y^k`
  with its own gradient and its own momentum buffer (no communication), and
  after every :math:`H` local steps the models are averaged (one collective of
  parameters):

  .. math::

    \begin{aligned}
    t < t_0&: \quad y \leftarrow y - \gamma_t \,
      \mathrm{Nesterov}\big(\operatorname{pmean}_k g^k + \lambda y\big),\\
    t \ge t_0&: \quad y^k \leftarrow y^k - \gamma_t \,
      \mathrm{Nesterov}^k\big(g^k + \lambda y^k\big), \quad
      y^k \leftarrow \operatorname{pmean}_k y^k
      \ \text{ if } (t - t_0 + 1) \bmod H = 0.
    \end{aligned}

  Momentum buffers (and BatchNorm statistics, which live in the model) are never
  averaged. The rules of `extrap_sgd` for a training script apply; from
  :math:`t_0` on the optimizer state differs per worker too. With
  `extrapolation_rate > 0` the gradient of worker :math:`k` is
  taken at :math:`z^k = y^k - \hat\gamma \zeta^k`, extrapolating from the
  worker's local model. :math:`H = 1` equals synchronous training (the update
  is linear in the gradient; equal up to rounding, and not with LARS, which is
  not linear).

  It is ``extrapolate(nesterov_sgd(...), perturbation, extrapolation_rate,
  communication=periodic_averaging(axis_name, sync_period=H,
  start_step=t0))``; see `periodic_averaging` for what is communicated when.
  Evaluate ``evaluation_params(params, state)``, the workers' average.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    start_step: t0 >= 0, the first local step (paper: the first learning-rate
      decay).
    sync_period: H >= 1, local steps between parameter averages (paper: 8 for
      global batch 8,192, 4 for 16,384; tuned in {4, 8, 16}).
    extrapolation_rate: γ̂ >= 0 (0: plain post-local SGD); c·γ_t/K for the
      raw past gradient, c·(γ̃/K)·γ_t/γ_peak for "trust_ratio" (see
      `extrap_sgd`).
    perturbation: ζ; default `past_gradient(extrapolation_scaling, ...)`
      (EXTRAP-SGD).
    momentum, nesterov, weight_decay, weight_decay_mask, trust_coefficient:
      the base step's, as in `nesterov_sgd`.
    extrapolation_scaling: the default perturbation's scaling, as in
      `extrap_sgd`: "none" (raw past gradient, paper §3.1) or "trust_ratio"
      (LARS-scaled past gradient, App. C.1, with this optimizer's λ and mask).
      Only with the default `perturbation`.
    axis_name, debug_checks: the worker axes and run-time checks, as in
      `extrapolate`.

  Returns:
    An `optax.GradientTransformationExtraArgs` with an `ExtrapolationState`.

  Raises:
    ValueError: for bad `start_step`, `sync_period`, an unknown
      `extrapolation_scaling`, or a non-"none" one with a `perturbation`.

  References:
    Lin et al., `Don't Use Large Mini-Batches, Use Local SGD
    <https://arxiv.org/abs/1808.07217>`__, ICLR 2020.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, App. D.1.

  Examples:
    Two workers, local steps from step 1 on, averaged every 2 local steps:
    step 1 is local (the models differ), step 2 averages them.

    >>> import jax, jax.numpy as jnp, optax
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=2)
    >>> tx = extrap_optax.post_local_sgd(
    ...     0.5, start_step=1, sync_period=2, momentum=0.0,
    ...     axis_name=workers.axis_name)
    >>> def step(params, state, grads):
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params = workers.replicate(jnp.zeros(1))
    >>> state = workers.map(tx.init)(params)
    >>> step = workers.map(step)
    >>> grads = workers.put(jnp.array([[1.0], [3.0]]))   # one row per worker
    >>> for _ in range(3):
    ...   params, state = step(params, state, grads)
    ...   print(params.ravel().tolist())
    [-1.0, -1.0]
    [-1.5, -2.5]
    [-3.0, -3.0]
  """
  if extrapolation_scaling not in perturbations.PAST_GRADIENT_SCALINGS:
    raise ValueError(
        "`extrapolation_scaling` must be one of "
        f"{perturbations.PAST_GRADIENT_SCALINGS}, got {extrapolation_scaling!r}.")
  if perturbation is None:
    perturbation = perturbations.past_gradient(
        extrapolation_scaling, weight_decay=weight_decay,
        weight_decay_mask=sgd.decay_mask(weight_decay_mask))
  elif extrapolation_scaling != "none":
    raise ValueError(
        f"`extrapolation_scaling`={extrapolation_scaling!r} scales the default "
        "past-gradient perturbation; with a custom `perturbation` leave it "
        "'none' (or pass `past_gradient(scaling=...)` as the perturbation).")
  base = sgd.nesterov_sgd(
      learning_rate, momentum=momentum, nesterov=nesterov,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      trust_coefficient=trust_coefficient)
  return extrapolation.extrapolate(
      base, perturbation, extrapolation_rate,
      communication=communication.periodic_averaging(
          axis_name, sync_period=sync_period, start_step=start_step),
      debug_checks=debug_checks)


def diloco(
    learning_rate: ScalarOrSchedule,
    *,
    sync_period: int = 500,
    outer_learning_rate: ScalarOrSchedule = 0.7,
    outer_momentum: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    extrapolation_rate: ScalarOrSchedule = 0.0,
    perturbation: perturbations.Perturbation | None = None,
    start_step: int = 0,
    axis_name: validation.AxisName | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""DiLoCo (Douillard et al., 2023): inner AdamW, outer Nesterov every H steps.

  Each worker takes :math:`H` local AdamW steps on its own data, with no
  communication; then the workers' averaged change is the gradient of an
  outer Nesterov step on the outer model :math:`\theta`:

  .. math::

    \begin{aligned}
    y^k &\leftarrow \mathrm{AdamW}^k(y^k, g^k) \quad H \text{ times (inner, local)},\\
    \Delta &= \theta - \operatorname{pmean}_k y^k, \qquad
    \theta \leftarrow \mathrm{Nesterov}(\theta, \Delta), \qquad
    y^k \leftarrow \theta.
    \end{aligned}

  With `extrapolation_rate` > 0 each worker takes its gradient at
  :math:`z^k = y^k - \hat\gamma \zeta^k` (EXTRAP over local steps; ζ the past
  local gradient by default). It is ``extrapolate(optax.adamw(...),
  perturbation, extrapolation_rate, communication=periodic_outer_step(
  axis_name, outer_optimizer=optax.sgd(outer_learning_rate, outer_momentum,
  nesterov=True), sync_period=H))``; evaluate ``evaluation_params(params,
  state)``, the workers' average (θ at the end of a round). Any other inner or
  outer optimizer: compose `extrapolate` and `periodic_outer_step` directly.

  Defaults are the paper's: outer Nesterov with learning rate 0.7 and
  momentum 0.9, :math:`H = 500`, inner AdamW with weight decay 0.1; the
  inner :math:`\beta_2 = 0.95` is the common choice for language models
  (the paper does not state it). The paper's inner learning rate is 4e-4
  with a cosine schedule and warm-up.

  Args:
    learning_rate: the inner AdamW learning rate, a float or a schedule.
    sync_period: :math:`H \ge 1`, inner steps per round.
    outer_learning_rate: the outer Nesterov learning rate.
    outer_momentum: the outer Nesterov momentum in [0, 1).
    b1: inner AdamW β1.
    b2: inner AdamW β2.
    eps: inner AdamW ε.
    weight_decay: inner AdamW decoupled weight decay.
    extrapolation_rate: γ̂ >= 0 (0: plain DiLoCo).
    perturbation: ζ; default `past_gradient()`.
    start_step: :math:`t_0 \ge 0`; steps before it are synchronous.
    axis_name: the worker axis name(s), or `None` for one worker.
    debug_checks: see `extrapolate`.

  Returns:
    An `optax.GradientTransformationExtraArgs` with an `ExtrapolationState`.

  Raises:
    ValueError: for a bad `sync_period`, `start_step` or momentum.

  References:
    Douillard et al., `DiLoCo: Distributed Low-Communication Training of
    Language Models <https://arxiv.org/abs/2311.08105>`__, 2023.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=2)
    >>> tx = extrap_optax.diloco(1e-3, sync_period=4, axis_name=workers.axis_name)
    >>> params = workers.replicate({"w": jnp.ones((2, 2))})
    >>> state = workers.map(tx.init)(params)
    >>> jax.tree.map(jnp.shape, state.communication_state.outer_params)
    {'w': (2, 2, 2)}
  """
  validation.check_momentum(outer_momentum)
  inner = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                      weight_decay=weight_decay)
  outer = optax.sgd(outer_learning_rate, momentum=outer_momentum,
                    nesterov=True)
  return extrapolation.extrapolate(
      inner, perturbation or perturbations.past_gradient(), extrapolation_rate,
      communication=communication.periodic_outer_step(
          axis_name, outer_optimizer=outer, sync_period=sync_period,
          start_step=start_step),
      debug_checks=debug_checks)
