"""Mini-batch SGD and the extrapolated-SGD family, ready to use.

All share one base step for the shared point y (design notes §1, §2, §7):

    d   = ḡ + λ·y          (coupled L2, masked: no decay on tensors with ndim < 2)
    buf = u·buf + d ;  y ← y − γ_t·(d + u·buf)        (PyTorch/optax Nesterov)

which is `optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(γ, u,
nesterov=True))` on the averaged gradient ḡ = pmean(g^k), and equals
`torch.optim.SGD(lr=γ, momentum=u, nesterov=True, weight_decay=λ)`.
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


def _checked_mask(name: str, mask: MaskOrFn) -> MaskOrFn:
  """`None` means `matrices_only`; a pytree mask is checked against the params.

  **Choice**: by default biases and normalisation scales/offsets (ndim < 2) are not
  decayed (He et al., 2016); the paper's name-based mask missed some BN layers.
  The default is `None` rather than the function itself because
  `optax.inject_hyperparams` would take a callable default for a schedule.
  """
  if mask is None:
    return lars.matrices_only
  if callable(mask):
    return mask

  def checked(params):
    validation.check_mask_matches(name, mask, params)
    return mask

  return checked


def nesterov_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
) -> optax.GradientTransformation:
  """The base step (no communication): coupled L2 [+ LARS] + Nesterov momentum + −γ_t.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    momentum: u in [0, 1); 0 gives plain SGD.
    weight_decay: λ >= 0, added to the gradient (coupled L2, as PyTorch SGD).
    weight_decay_mask: a pytree of bools like the params, or a callable
      params -> such a tree; `None` (default) decays the tensors with ndim >= 2
      (`matrices_only`).
    trust_coefficient: LARS trust coefficient γ̃ >= 0 (paper: 0.02, tuned in
      {0.01, 0.02, 0.03}) to scale the decayed gradient per tensor as NVIDIA apex
      LARC does (`scale_by_larc`, design notes §6), or `None` for no LARS.

  Returns:
    `optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(γ, u, nesterov=True))`,
    with `scale_by_larc(γ, trust_coefficient=γ̃, weight_decay=λ)` in place of the
    decay when LARS is on.
  """
  validation.check_non_negative("learning_rate", learning_rate)
  validation.check_momentum(momentum)
  validation.check_non_negative("weight_decay", weight_decay)
  weight_decay_mask = _checked_mask("weight_decay_mask", weight_decay_mask)
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
                nesterov=not no_momentum),
  )


def minibatch_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformation:
  """Mini-batch SGD with Nesterov momentum over K workers (paper eq. 1, §5).

  One `pmean` of the gradient over `axis_name`, then `nesterov_sgd`. The
  baseline of the paper ("mini-batch SGD" means with Nesterov momentum), and
  EXTRAP-SGD with `extrapolation_rate=0`, bit for bit.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    momentum: u in [0, 1).
    weight_decay: coupled L2 coefficient λ >= 0.
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    axis_name: the worker axis name(s), or `None` for one worker.

  Returns:
    An `optax.GradientTransformation`.
  """
  return optax.chain(
      collectives.all_reduce_mean(axis_name),
      nesterov_sgd(learning_rate, momentum=momentum, weight_decay=weight_decay,
                   weight_decay_mask=weight_decay_mask,
                   trust_coefficient=trust_coefficient),
  )


def extrapolated_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    perturbation: perturbations.Perturbation,
    extrapolation_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Extrapolated SGD (paper §3.2) with any perturbation source ζ.

  Each worker computes its gradient at z^k_t = y_t − γ̂_t·ζ^k_t (the parameters it
  holds); y follows `minibatch_sgd` on the gradients averaged over workers.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    perturbation: ζ, e.g. `past_gradient()`, `past_gradient("trust_ratio",
      weight_decay=λ, weight_decay_mask=mask)`, `filterwise_noise(seed)`,
      `smoothout_noise(seed)`, `gradient_noise()`. A source that reads λ or
      the mask must be given the same values as this optimizer
      (`extrap_sgd(..., extrapolation_scaling="trust_ratio")` does so).
    extrapolation_rate: γ̂ >= 0, a float or a schedule (paper: γ̂ ≈ c·γ/K for
      the raw past gradient; see `extrap_sgd` for the LARS-scaled one).
    momentum: u in [0, 1).
    weight_decay: coupled L2 coefficient λ >= 0 (on y, never on ζ).
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    axis_name: the worker axis name(s), or `None` for one worker.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `evaluation_params(params, state)`
    gives y_t.
  """
  return extrapolation.extrapolate(
      nesterov_sgd(learning_rate, momentum=momentum, weight_decay=weight_decay,
                   weight_decay_mask=weight_decay_mask,
                   trust_coefficient=trust_coefficient),
      perturbation, extrapolation_rate, axis_name=axis_name)


def extrap_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    extrapolation_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    extrapolation_scaling: Literal["none", "trust_ratio"] = "none",
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """EXTRAP-SGD (Lin et al., ICML 2020, Algorithm 1).

  On worker k, with y_t the shared point and g^k_{t−1} the worker's previous
  local mini-batch gradient (g_{−1} = 0):

      z^k = y_t − γ̂_t·ζ^k,  ζ^k = g^k_{t−1}   # extrapolation from the past
      g^k = ∇f(z^k; local batch)              # computed by the caller at `params`
      ḡ   = pmean(g^k)                        # the only collective
      d   = ḡ + λ·y_t ;  buf = u·buf + d ;  y_{t+1} = y_t − γ_t·(d + u·buf)

  The parameters a worker holds are z^k; `evaluation_params(params, state)` is y.
  `extrapolation_rate=0` gives `minibatch_sgd` bit for bit. With
  `axis_name=None` it is single-worker extrapolation from the past (Gidel et al.,
  2018) with Nesterov momentum.

  The paper admits two readings of the extrapolation scale, selected by
  `extrapolation_scaling`:

  * "none" (default): ζ^k = g^k_{t−1}, the raw past gradient, with
    γ̂_t = c·γ_t/K, c in {1, 2, 4}: §3.1 (past gradients let γ̂ "directly
    take on the learning rate used for small mini-batch training") and Remark 4.5
    (γ̂ ≈ γ/K, which the convergence analysis, γ̂ <= u²/(1−u)²·γ, covers). It
    is the default because it is Algorithm 1 as printed and as analysed; it
    needs no LARS. Rate: `extrapolation_rate_schedule(learning_rate,
    num_workers=K, scale=c)`.
  * "trust_ratio": ζ^k_j = ‖y_j‖·g^k_j / (‖g^k_j‖ + λ_j‖y_j‖ + 1e-8) per tensor j
    (`past_gradient("trust_ratio")`, with this optimizer's λ and mask), so
    that with γ̂ = c·γ̃/K the offset is a LARS step of the past gradient scaled
    by c/K: App. C.1 tunes γ̂ "by scaling the γ̃/K" (γ̃ the trust coefficient)
    with c in {1, 2, 4}. The natural rate is γ̂_t = c·(γ̃/K)·γ_t/γ_peak, which
    follows the warm-up and decay of γ_t as the LARS step does. Unlike the
    LARC step it is not clipped at γ_t. Meant for use with `trust_coefficient`
    set (with LARS the raw extrapolation is not shrunk where the step is);
    without it the formula is still defined and allowed.

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    extrapolation_rate: γ̂ >= 0, a float or a schedule. For "none" the paper
      sets γ̂ ≈ γ/K (the learning rate of small-batch training) and tunes c in
      γ̂ = c·γ/K over {1, 2, 4}: `extrapolation_rate_schedule(learning_rate,
      num_workers=K)`. For "trust_ratio", γ̂ = c·γ̃/K (times γ_t/γ_peak to
      follow the schedule).
    momentum: u in [0, 1) (paper: 0.9).
    weight_decay: coupled L2 coefficient λ >= 0 (paper: 1e-4 for ResNet-20).
    weight_decay_mask: which tensors are decayed (default: ndim >= 2); with
      "trust_ratio" also where λ_j = λ in ζ.
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    extrapolation_scaling: "none" (raw past gradient, §3.1) or "trust_ratio"
      (LARS-scaled past gradient, App. C.1); see above.
    axis_name: the worker axis name(s), or `None` for one worker.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for an `extrapolation_scaling` other than "none" or
      "trust_ratio", or a bad hyperparameter (named).
  """
  if extrapolation_scaling not in perturbations.PAST_GRADIENT_SCALINGS:
    raise ValueError(
        "`extrapolation_scaling` must be one of "
        f"{perturbations.PAST_GRADIENT_SCALINGS}, got {extrapolation_scaling!r}.")
  perturbation = perturbations.past_gradient(
      extrapolation_scaling, weight_decay=weight_decay,
      weight_decay_mask=_checked_mask("weight_decay_mask", weight_decay_mask))
  return extrapolated_sgd(
      learning_rate, perturbation=perturbation,
      extrapolation_rate=extrapolation_rate, momentum=momentum,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      trust_coefficient=trust_coefficient, axis_name=axis_name)


def noise_extrap_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    extrapolation_rate: ScalarOrSchedule,
    noise: Literal["uniform", "gaussian", "smoothout", "gradient"] = "uniform",
    seed: int | jax.Array = 0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The noise variants of extrapolated SGD (paper §3.2, Table 1).

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
    weight_decay: coupled L2 coefficient λ >= 0.
    weight_decay_mask: which tensors are decayed (default: ndim >= 2).
    trust_coefficient: LARS (apex LARC) trust coefficient γ̃, or `None` for none.
    axis_name: the worker axis name(s), or `None` for one worker.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
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
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      trust_coefficient=trust_coefficient, axis_name=axis_name)
