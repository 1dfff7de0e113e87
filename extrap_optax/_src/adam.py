"""Adam over K workers and EXTRAP-ADAM (Lin et al., ICML 2020, Algorithm 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import collectives
from extrap_optax._src import extrapolation
from extrap_optax._src import perturbations
from extrap_optax._src import validation

ScalarOrSchedule = extrapolation.ScalarOrSchedule


def _check_adam_args(learning_rate, b1, b2, eps) -> None:
  validation.check_non_negative("learning_rate", learning_rate)
  for name, value in (("b1", b1), ("b2", b2)):
    if validation.is_concrete_number(value) and not 0.0 <= value < 1.0:
      raise ValueError(f"`{name}` must lie in [0, 1), got {value}.")
  validation.check_non_negative("eps", eps)


def adam(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformation:
  """Adam on the gradient averaged over K workers: `chain(all_reduce_mean, optax.adam)`.

  Defaults are `optax.adam`'s, so that swapping one for the other changes
  nothing; the paper's Transformer uses β = (0.9, 0.98), ε = 1e-9 (App. C;
  the experiments' presets set them).

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    b1: β1 in [0, 1) (optax's default 0.9).
    b2: β2 in [0, 1) (optax's default 0.999; the paper's Transformer 0.98).
    eps: ε >= 0, added to √v̂ (optax's default 1e-8; the paper 1e-9).
    axis_name: the worker axis name(s), or `None` for one worker.

  Returns:
    An `optax.GradientTransformation`.
  """
  _check_adam_args(learning_rate, b1, b2, eps)
  return optax.chain(
      collectives.all_reduce_mean(axis_name),
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adam_moment_extrapolation(
    b1: float, b2: float, eps: float, *, paper_literal: bool = False,
) -> perturbations.Perturbation:
  """ζ^k of EXTRAP-ADAM: the past local gradient, through the Adam moments.

  With m_t, v_t the moments after step t (from the averaged gradients only) and
  g^k_t the worker's local gradient:

      m̃ = β1·m_t + (1−β1)·g^k_t ,  ṽ = β2·v_t + (1−β2)·(g^k_t)²
      ζ = m̂ / (√v̂ + ε)     with m̂ = m̃/(1−β1^{t+2}), v̂ = ṽ/(1−β2^{t+2})

  i.e. the bias correction of the next main step. **Choice**: the paper prints
  ζ = m̃ / (ṽ + ε), without the square root (and without bias correction); that
  is read as a typo, since without the root the step has the wrong units.
  `paper_literal=True` gives the printed formula.

  Args:
    b1: β1 of the base Adam.
    b2: β2 of the base Adam.
    eps: ε of the base Adam.
    paper_literal: use the formula as printed in Algorithm 3, line 2.

  Returns:
    A `Perturbation` that reads the `ScaleByAdamState` of the base state.
  """

  def direction(context: perturbations.PerturbationContext) -> optax.Updates:
    adam_state = optax.tree_utils.tree_get(context.next_base_state, "ScaleByAdamState")
    mu = optax.tree_utils.tree_update_moment(context.local_grads, adam_state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(
        context.local_grads, adam_state.nu, b2, 2)
    if paper_literal:
      return jax.tree.map(lambda m, v: m / (v + eps), mu, nu)
    next_step = optax.safe_increment(adam_state.count)
    mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, next_step)
    nu_hat = optax.tree_utils.tree_bias_correction(nu, b2, next_step)
    return jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)

  return direction


def extrap_adam(
    learning_rate: ScalarOrSchedule,
    *,
    extrapolation_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    paper_literal: bool = False,
    axis_name: validation.AxisName | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """EXTRAP-ADAM (Lin et al., ICML 2020, Algorithm 3, App. D.2).

  Worker k computes its gradient at z^k = y_t − γ̂·ζ^k (the parameters it holds),
  with ζ^k = `adam_moment_extrapolation` of its previous local gradient; the
  shared point y takes a standard bias-corrected Adam step (`optax.adam`) on
  the averaged gradient ḡ = pmean(g^k), and the moments see ḡ only:

      m_t = β1·m + (1−β1)·ḡ ,  v_t = β2·v + (1−β2)·ḡ² ,
      y_{t+1} = y_t − γ_t·m̂_t/(√v̂_t + ε)

  `extrapolation_rate=0` equals `adam` (and, for one worker, `optax.adam`) bit
  for bit. The first step is not extrapolated. The defaults of β1, β2 and ε
  are `optax.adam`'s; the paper's Transformer uses β2 = 0.98, ε = 1e-9
  (App. C). The rules of `extrap_sgd` for a training script (per-worker state,
  `evaluation_params`, no averaging of gradients in the script) apply; the
  paper sets γ̂ = c·γ/K, c in {1, 2, 4}.

  Args:
    learning_rate: γ, a float or an `optax.Schedule` (the paper: inverse square
      root, `extrap_optax.inverse_sqrt_schedule`).
    extrapolation_rate: γ̂ >= 0, a float or a schedule (paper: c·γ/K).
    b1: β1 in [0, 1) (optax's default 0.9; the paper 0.9).
    b2: β2 in [0, 1) (optax's default 0.999; the paper 0.98).
    eps: ε >= 0 (optax's default 1e-8; the paper 1e-9).
    paper_literal: extrapolate with the formula as printed (no square root).
    axis_name: the worker axis name(s), or `None` for one worker.
    debug_checks: check at run time that the workers' gradients differ (see
      `extrapolate`).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `evaluation_params` gives y_t.

  Raises:
    ValueError: for a bad hyperparameter, naming it.
  """
  _check_adam_args(learning_rate, b1, b2, eps)
  return extrapolation.extrapolate(
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
      adam_moment_extrapolation(b1, b2, eps, paper_literal=paper_literal),
      extrapolation_rate, axis_name=axis_name, debug_checks=debug_checks)
