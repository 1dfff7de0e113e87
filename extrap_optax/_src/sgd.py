"""Mini-batch SGD and the extrapolated-SGD family, ready to use.

All share one base step for the shared point y:

    d   = ḡ + λ·y          (coupled L2, masked: no decay on tensors with ndim < 2)
    buf = u·buf + d ;  y ← y − γ_t·(d + u·buf)        (PyTorch/optax Nesterov)
                       y ← y − γ_t·buf                (nesterov=False: heavy ball)

which is `optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(γ, u,
nesterov=nesterov))` on the averaged gradient ḡ = pmean(g^k), and equals
`torch.optim.SGD(lr=γ, momentum=u, nesterov=nesterov, weight_decay=λ)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import optax

from extrap_optax._src import collectives
from extrap_optax._src import extrapolation
from extrap_optax._src import lars
from extrap_optax._src import perturbations
from extrap_optax._src import validation

ScalarOrSchedule = extrapolation.ScalarOrSchedule
MaskOrFn = Any | Callable[[optax.Params], Any] | None


def _decay_mask(mask: MaskOrFn) -> Callable[[optax.Params], Any]:
  """Checks `weight_decay_mask` now; the returned callable resolves it at `init`.

  **Choice**: by default (`None`) biases and normalisation scales/offsets
  (ndim < 2) are not decayed (He et al., 2016); the paper's name-based mask
  missed some BN layers. The default is `None` rather than `matrices_only`
  itself because `optax.inject_hyperparams` would take a callable default for a
  schedule.
  """
  validation.check_mask("weight_decay_mask", mask)
  mask = lars.matrices_only if mask is None else mask
  return lambda params: validation.resolve_mask("weight_decay_mask", mask, params)


def nesterov_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
) -> optax.GradientTransformation:
  """The base step (no communication): coupled L2 [+ LARS] + momentum + −γ_t.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    momentum: u in [0, 1); 0 gives plain SGD.
    nesterov: Nesterov momentum (default, the paper's), or heavy-ball momentum
      for False; both in the PyTorch/optax form (see the module docstring).
    weight_decay: λ >= 0, added to the gradient (coupled L2, as PyTorch SGD).
    weight_decay_mask: True/False for every tensor, a pytree of bools like the
      params, or a callable params -> such a tree; `None` (default) decays the
      tensors with ndim >= 2 (`matrices_only`). Checked when the optimizer is
      built; its structure is checked against the params at `init`.
    trust_coefficient: LARS trust coefficient γ̃ >= 0 (paper: 0.02, tuned in
      {0.01, 0.02, 0.03}) to scale the decayed gradient per tensor as NVIDIA apex
      LARC does (`scale_by_larc`, design notes §6), or `None` for no LARS.

  Returns:
    `optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(γ, u, nesterov))`,
    with `scale_by_larc(γ, trust_coefficient=γ̃, weight_decay=λ)` in place of the
    decay when LARS is on.

  Raises:
    ValueError: naming the argument, for a negative `learning_rate` or
      `weight_decay`, a `momentum` outside [0, 1), a non-bool `nesterov`, or a
      `weight_decay_mask` that is not a mask.
  """
  validation.check_non_negative("learning_rate", learning_rate)
  validation.check_momentum(momentum)
  validation.check_bool("nesterov", nesterov)
  validation.check_non_negative("weight_decay", weight_decay)
  weight_decay_mask = _decay_mask(weight_decay_mask)
  if trust_coefficient is None:
    preprocess = optax.add_decayed_weights(weight_decay, weight_decay_mask)
  else:
    preprocess = lars.scale_by_larc(
        learning_rate, trust_coefficient=trust_coefficient,
        weight_decay=weight_decay, weight_decay_mask=weight_decay_mask)
  # A literal 0 drops the buffer; an injected (traced) momentum keeps it.
  no_momentum = validation.is_concrete_number(momentum) and momentum == 0
  return optax.chain(
      preprocess,
      optax.sgd(learning_rate, momentum=None if no_momentum else momentum,
                nesterov=nesterov and not no_momentum),
  )


def minibatch_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformation:
  """Mini-batch SGD with Nesterov momentum over K workers (paper eq. 1, §5).

  One `pmean` of the gradient over `axis_name`, then `nesterov_sgd`. The
  baseline of the paper ("mini-batch SGD" means with Nesterov momentum), and
  EXTRAP-SGD with `extrapolation_rate=0`, bit for bit op by op.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    momentum: u in [0, 1).
    nesterov: Nesterov momentum (default, the paper's); False: heavy ball.
    weight_decay: coupled L2 coefficient λ >= 0.
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    axis_name: the worker axis name(s), or `None` for one worker.

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: for a bad hyperparameter, naming it.
  """
  return optax.chain(
      collectives.all_reduce_mean(axis_name),
      nesterov_sgd(learning_rate, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                   trust_coefficient=trust_coefficient),
  )


def extrapolated_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    perturbation: perturbations.Perturbation,
    extrapolation_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Extrapolated SGD (paper §3.2) with any perturbation source ζ.

  Each worker computes its gradient at z^k_t = y_t − γ̂_t·ζ^k_t (the parameters it
  holds); y follows `minibatch_sgd` on the gradients averaged over workers. The
  rules of `extrap_sgd` for a training script (per-worker state, evaluation at
  `evaluation_params`, no averaging of gradients in the script) apply.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    perturbation: ζ, e.g. `past_gradient()`, `past_gradient("trust_ratio",
      weight_decay=λ, weight_decay_mask=mask)`, `filterwise_noise(seed)`,
      `smoothout_noise(seed)`, `gradient_noise()`. A source that reads λ or
      the mask must be given the same values as this optimizer
      (`extrap_sgd(..., extrapolation_scaling="trust_ratio")` does so).
    extrapolation_rate: γ̂ >= 0, a float or a schedule (paper: γ̂ ≈ c·γ/K for
      the raw past gradient; see `extrap_sgd` for the LARS-scaled one and for
      the values the theory allows).
    momentum: u in [0, 1).
    nesterov: Nesterov momentum (default, the paper's); False: heavy ball.
    weight_decay: coupled L2 coefficient λ >= 0 (on y, never on ζ).
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    axis_name: the worker axis name(s), or `None` for one worker.
    debug_checks: check at run time that the workers' gradients differ (see
      `extrapolate`).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `evaluation_params(params, state)`
    gives y_t.

  Raises:
    ValueError: for a bad hyperparameter, naming it.
  """
  return extrapolation.extrapolate(
      nesterov_sgd(learning_rate, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                   trust_coefficient=trust_coefficient),
      perturbation, extrapolation_rate, axis_name=axis_name,
      debug_checks=debug_checks)


def extrap_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    extrapolation_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    extrapolation_scaling: Literal["none", "trust_ratio"] = "none",
    axis_name: validation.AxisName | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""EXTRAP-SGD (Lin et al., ICML 2020, Algorithm 1).

  On worker :math:`k`, with :math:`y_t` the shared point and :math:`g^k_{t-1}`
  the worker's previous local mini-batch gradient (:math:`g_{-1} = 0`):

  .. math::

    z^k_t &= y_t - \hat\gamma_t \zeta^k_t, \quad \zeta^k_t = g^k_{t-1}
      \quad \text{(extrapolation from the past)} \\
    g^k_t &= \nabla f(z^k_t; \text{local batch})
      \quad \text{(computed by the caller at } \texttt{params}) \\
    \bar g_t &= \tfrac{1}{K} \textstyle\sum_k g^k_t
      \quad \text{(the only collective)} \\
    d_t &= \bar g_t + \lambda y_t, \quad b_t = u\, b_{t-1} + d_t, \quad
    y_{t+1} = y_t - \gamma_t (d_t + u\, b_t)

  (with ``nesterov=False``, :math:`y_{t+1} = y_t - \gamma_t b_t`). The
  parameters a worker holds are :math:`z^k`; ``evaluation_params(params,
  state)`` is :math:`y`. ``extrapolation_rate=0`` gives `minibatch_sgd` bit for
  bit op by op. With ``axis_name=None`` it is single-worker extrapolation from
  the past (Gidel et al., 2018) with Nesterov momentum.

  **In a data-parallel training script** (``README.md``, "Use it in your
  training script", has the diff for pmap, shard_map, jit and Flax NNX), four
  things differ from an optax optimizer, and getting them wrong is silent:

  1. *The parameters and the optimizer state are per worker.* Each worker holds
     its own :math:`z^k` (and its past gradient through it): keep them stacked
     along the worker axis (``pmap`` ``in_axes=0, out_axes=0``, ``shard_map``
     ``P(axis)``, a ``vmap``-ed step), never ``out_axes=None`` /
     ``out_specs=P()`` (the result is labelled replicated while the devices
     hold K different points) and never ``unreplicate`` them before a
     checkpoint (that keeps worker 0 only). Checkpoint the stacked trees
     (`check_per_worker` catches both mistakes); a resumed run then continues
     bit for bit.
  2. *Evaluate and ship* ``evaluation_params(params, state)``, the shared point
     :math:`y_t`; ``params`` is a worker's extrapolated point.
  3. *Do not average the gradients in the script*: no ``lax.pmean``, no
     ``jax.value_and_grad``/``DynamicScale`` with ``axis_name``. This
     transformation averages over ``axis_name`` itself and needs each worker's
     own :math:`g^k`; given averaged gradients every worker extrapolates with
     :math:`\bar g`, a different algorithm. Inside ``jax.shard_map`` (with its
     default ``check_vma=True``) this is an error when the step is traced;
     elsewhere ``debug_checks=True`` raises at run time when the workers'
     gradients agree to 1e-3 (relative) while extrapolating, at the cost of a
     host callback per step and no extra collective.
  4. *Bind* ``axis_name`` to the worker axis: the ``pmap``/``shard_map`` axis,
     or under plain ``jax.jit`` with sharded inputs a
     ``jax.vmap(step, axis_name=..., spmd_axis_name=<mesh axis>)`` over the
     stacked workers. An unbound name is an error that says how to bind it;
     ``axis_name=None`` inside a mapped step would train K independent models.

  **Stability.** Theorem 4.4 proves convergence (smooth non-convex :math:`f`)
  for :math:`\hat\gamma \le \frac{u^2}{(1-u)^2}\gamma` together with the step
  size :math:`\gamma \le \frac{(1-u)^2}{L(1+3u+u^3)}`; with :math:`u = 0.9`
  the first bound is :math:`\hat\gamma \le 81\gamma`, and with :math:`u = 0`
  it allows no extrapolation at all. Corollary 4.6 and Remark 4.5 take
  :math:`\hat\gamma \le \gamma/K`, and the paper's experiments use
  :math:`\hat\gamma = c\,\gamma/K`, :math:`c \in \{1, 2, 4\}` (App. C.1).
  These are sufficient conditions for a small :math:`\gamma`; at the large
  :math:`\gamma` of practice a large :math:`\hat\gamma` can stall or diverge
  where the same :math:`\gamma` without extrapolation converges. For example,
  on the Rosenbrock function from (0, 0) with :math:`\gamma = 10^{-3}`,
  :math:`u = 0.9` and one worker, 10,000 steps reach :math:`f \approx 10^{-12}`
  with :math:`\hat\gamma = \gamma/4` (as without extrapolation) but only
  :math:`f \approx 0.4` with :math:`\hat\gamma = \gamma`. Start from
  :math:`\hat\gamma = \gamma/K` (`extrapolation_rate_schedule`).

  The paper admits two readings of the extrapolation scale, selected by
  ``extrapolation_scaling``:

  * "none" (default): :math:`\zeta^k = g^k_{t-1}`, the raw past gradient, with
    :math:`\hat\gamma_t = c\,\gamma_t/K`, :math:`c \in \{1, 2, 4\}`: §3.1
    (past gradients let :math:`\hat\gamma` "directly take on the learning rate
    used for small mini-batch training") and Remark 4.5. It is the default
    because it is Algorithm 1 as printed and as analysed; it needs no LARS.
    Rate: ``extrapolation_rate_schedule(learning_rate, num_workers=K,
    scale=c)``.
  * "trust_ratio": :math:`\zeta^k_j = \|y_j\| g^k_j / (\|g^k_j\| +
    \lambda_j\|y_j\| + 10^{-8})` per tensor :math:`j`
    (``past_gradient("trust_ratio")``, with this optimizer's :math:`\lambda`
    and mask), so that with :math:`\hat\gamma = c\,\tilde\gamma/K` the offset
    is a LARS step of the past gradient scaled by :math:`c/K`: App. C.1 tunes
    :math:`\hat\gamma` "by scaling the :math:`\tilde\gamma/K`"
    (:math:`\tilde\gamma` the trust coefficient) with :math:`c \in \{1, 2,
    4\}`. The natural rate is :math:`\hat\gamma_t = c\,(\tilde\gamma/K)\,
    \gamma_t/\gamma_{\text{peak}}`, which follows the warm-up and decay of
    :math:`\gamma_t` as the LARS step does. Unlike the LARC step it is not
    clipped at :math:`\gamma_t`. Meant for use with ``trust_coefficient`` set;
    without it the formula is still defined and allowed.

  Args:
    learning_rate: :math:`\gamma`, a float or an `optax.Schedule`.
    extrapolation_rate: :math:`\hat\gamma \ge 0`, a float or a schedule; see
      "Stability" above. For "none" the paper uses :math:`c\,\gamma/K`:
      ``extrapolation_rate_schedule(learning_rate, num_workers=K, scale=c)``.
      For "trust_ratio", :math:`c\,\tilde\gamma/K` (times
      :math:`\gamma_t/\gamma_{\text{peak}}` to follow the schedule).
    momentum: :math:`u` in [0, 1) (paper: 0.9).
    nesterov: Nesterov momentum (default, the paper's); False gives
      heavy-ball momentum, as ``optax.sgd(..., nesterov=False)``.
    weight_decay: coupled L2 coefficient :math:`\lambda \ge 0` (paper: 1e-4
      for ResNet-20).
    weight_decay_mask: which tensors are decayed: None (default: ndim >= 2),
      True/False, a pytree of bools like the params or a callable params ->
      such a tree; with "trust_ratio" also where :math:`\lambda_j = \lambda`
      in :math:`\zeta`.
    trust_coefficient: LARS (apex LARC) trust coefficient :math:`\tilde\gamma`,
      or None for none.
    extrapolation_scaling: "none" (raw past gradient, §3.1) or "trust_ratio"
      (LARS-scaled past gradient, App. C.1); see above.
    axis_name: the worker axis name(s), or None for one worker.
    debug_checks: raise at run time when the workers' gradients agree while
      extrapolating (point 3 above; see `extrapolate`).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state holds
    :math:`y_t` (`evaluation_params`).

  Raises:
    ValueError: naming the argument and the fix, for an
      ``extrapolation_scaling`` other than "none" or "trust_ratio", a
      negative rate, weight decay or learning rate, a momentum outside [0, 1),
      or a ``weight_decay_mask`` that is not a mask (when the optimizer is
      built) or does not match the params (at ``init``).

  References:
    Lin et al., Extrapolation for Large-batch Training in Deep Learning,
    ICML 2020 (Algorithm 1, §3.1, Theorem 4.4, Remark 4.5, Corollary 4.6,
    App. C.1).
    Gidel et al., `A Variational Inequality Perspective on Generative
    Adversarial Networks <https://arxiv.org/abs/1802.10551>`_, ICLR 2019.
  """
  if extrapolation_scaling not in perturbations.PAST_GRADIENT_SCALINGS:
    raise ValueError(
        "`extrapolation_scaling` must be one of "
        f"{perturbations.PAST_GRADIENT_SCALINGS}, got {extrapolation_scaling!r}.")
  perturbation = perturbations.past_gradient(
      extrapolation_scaling, weight_decay=weight_decay,
      weight_decay_mask=_decay_mask(weight_decay_mask))
  return extrapolated_sgd(
      learning_rate, perturbation=perturbation,
      extrapolation_rate=extrapolation_rate, momentum=momentum,
      nesterov=nesterov, weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask, trust_coefficient=trust_coefficient,
      axis_name=axis_name, debug_checks=debug_checks)


def noise_extrap_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    extrapolation_rate: ScalarOrSchedule,
    noise: Literal["uniform", "gaussian", "smoothout", "gradient"] = "uniform",
    seed: int = 0,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """The noise variants of extrapolated SGD (paper §3.2, Table 1).

  The rules of `extrap_sgd` for a training script apply.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    extrapolation_rate: γ̂ >= 0 (paper: c·γ/K with c tuned in
      {0.1, 0.25, 0.5, 1, 2, 4}).
    noise: "uniform" or "gaussian": filter-wise scaled isotropic noise drawn
      independently on each worker; "smoothout": uniform filter-wise noise, one
      draw shared by all workers (Wen et al., 2018); "gradient": anisotropic
      stochastic-gradient noise g^k − ḡ (no extra communication).
    seed: the base seed of the noise (ignored by "gradient").
    momentum: u in [0, 1).
    nesterov: Nesterov momentum (default, the paper's); False: heavy ball.
    weight_decay: coupled L2 coefficient λ >= 0.
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    axis_name: the worker axis name(s), or `None` for one worker.
    debug_checks: check at run time that the workers' gradients differ (see
      `extrapolate`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for an unknown `noise` or a bad hyperparameter, naming it.
  """
  sources = {
      "uniform": lambda: perturbations.filterwise_noise(seed, distribution="uniform"),
      "gaussian": lambda: perturbations.filterwise_noise(seed, distribution="gaussian"),
      "smoothout": lambda: perturbations.smoothout_noise(seed),
      "gradient": perturbations.gradient_noise,
  }
  if noise not in sources:
    raise ValueError(f"`noise` must be one of {sorted(sources)}, got {noise!r}.")
  return extrapolated_sgd(
      learning_rate, perturbation=sources[noise](),
      extrapolation_rate=extrapolation_rate, momentum=momentum,
      nesterov=nesterov, weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask, trust_coefficient=trust_coefficient,
      axis_name=axis_name, debug_checks=debug_checks)
