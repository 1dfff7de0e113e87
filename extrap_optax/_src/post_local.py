"""Post-local SGD (Lin et al., ICLR 2020), with or without EXTRAP-SGD (paper Algorithm 2)."""

from __future__ import annotations

from typing import Literal

import optax

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

  One worker per device (`Workers` with K <= devices) runs the local steps with
  no collective at all. With several virtual workers per device the phase test
  is a `jax.lax.cond` on per-worker (vmapped) state, which vmap turns into a
  select that evaluates both branches: the result is the same, the
  communication is not saved. See :ref:`post-local-sgd`.

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
    momentum: u in [0, 1).
    nesterov: Nesterov momentum (default, the paper's); False: heavy ball.
    weight_decay: coupled L2 coefficient λ >= 0.
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS trust coefficient γ̃ (apex LARC), or `None` for no LARS.
    extrapolation_scaling: the default perturbation's scaling, as in
      `extrap_sgd`: "none" (raw past gradient, paper §3.1) or "trust_ratio"
      (LARS-scaled past gradient, App. C.1, with this optimizer's λ and mask).
      Only with the default `perturbation`.
    axis_name: the worker axis name(s), or `None` for one worker.
    debug_checks: check at run time that the workers' gradients differ on the
      synchronous steps (see `extrapolate`).

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
  for name, value, minimum in (("start_step", start_step, 0),
                               ("sync_period", sync_period, 1)):
    if not isinstance(value, int) or value < minimum:
      raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
  if extrapolation_scaling not in perturbations.PAST_GRADIENT_SCALINGS:
    raise ValueError(
        "`extrapolation_scaling` must be one of "
        f"{perturbations.PAST_GRADIENT_SCALINGS}, got {extrapolation_scaling!r}.")
  if perturbation is None:
    perturbation = perturbations.past_gradient(
        extrapolation_scaling, weight_decay=weight_decay,
        weight_decay_mask=sgd._decay_mask(weight_decay_mask))
  elif extrapolation_scaling != "none":
    raise ValueError(
        f"`extrapolation_scaling`={extrapolation_scaling!r} scales the default "
        "past-gradient perturbation; with a custom `perturbation` leave it "
        "'none' (or pass `past_gradient(scaling=...)` as the perturbation).")
  base = sgd.nesterov_sgd(
      learning_rate, momentum=momentum, nesterov=nesterov,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      trust_coefficient=trust_coefficient)
  return extrapolation.make_extrapolated(
      base, perturbation, extrapolation_rate,
      axis_name, extrapolation.LocalSteps(start_step, sync_period),
      debug_checks=debug_checks)
