"""Adam over K workers and EXTRAP-ADAM (Lin et al., ICML 2020, Algorithm 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import collectives
from extrap_optax._src import communication as communication_lib
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
  r"""Adam on the gradient averaged over K workers: `chain(all_reduce_mean, optax.adam)`.

  .. math::

    \bar g_t = \operatorname{pmean}_k g^k_t, \quad
    m_t = \beta_1 m_{t-1} + (1-\beta_1) \bar g_t, \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) \bar g_t^2, \quad
    y_{t+1} = y_t - \gamma_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.

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

  Raises:
    ValueError: for a negative `learning_rate` or `eps`, or `b1`, `b2` outside
      [0, 1) (named).

  References:
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`__, ICLR 2015.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, App. C.

  Examples:
    One worker: `optax.adam`'s first step, :math:`-\gamma\,\mathrm{sign}(g)`
    (up to ε):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import extrap_optax
    >>> tx = extrap_optax.adam(0.1)
    >>> params = jnp.array([1.0, 1.0])
    >>> updates, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(params), params)
    >>> print(np.asarray(updates).round(4))
    [-0.1  0.1]
  """
  _check_adam_args(learning_rate, b1, b2, eps)
  return optax.chain(
      collectives.all_reduce_mean(axis_name),
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adam_moment_extrapolation(
    b1: float, b2: float, eps: float, *, paper_literal: bool = False,
) -> perturbations.Perturbation:
  r"""ζ^k of EXTRAP-ADAM: the past local gradient, through the Adam moments.

  With :math:`m_t, v_t` the moments after step :math:`t` (from the averaged
  gradients only) and :math:`g^k_t` the worker's local gradient:

  .. math::

    \tilde m = \beta_1 m_t + (1-\beta_1) g^k_t, \quad
    \tilde v = \beta_2 v_t + (1-\beta_2) (g^k_t)^2, \quad
    \zeta = \frac{\tilde m / (1-\beta_1^{t+2})}
                  {\sqrt{\tilde v / (1-\beta_2^{t+2})} + \epsilon},

  i.e. the bias correction of the next main step. **Choice**: the paper prints
  :math:`\zeta = \tilde m / (\tilde v + \epsilon)`, without the square root
  (and without bias correction); that is read as a typo, since without the
  root the step has the wrong units (see :ref:`extrap-adam`).
  ``paper_literal=True`` gives the printed formula.

  Args:
    b1: β1 of the base Adam.
    b2: β2 of the base Adam.
    eps: ε of the base Adam.
    paper_literal: use the formula as printed in Algorithm 3, line 2.

  Returns:
    A `Perturbation` that reads the `ScaleByAdamState` of the base state.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, Algorithm 3
    and App. D.2.

  Examples:
    At step 0 the moments are zero, so ζ is Adam's first step direction,
    :math:`\mathrm{sign}(g)` (up to ε):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax
    >>> import extrap_optax
    >>> params = jnp.array([1.0, 1.0])
    >>> grads = jnp.array([0.5, -2.0])
    >>> context = extrap_optax.PerturbationContext(
    ...     local_grads=grads, mean_grads=grads, params=params,
    ...     next_params=params, base_state=None,
    ...     next_base_state=optax.adam(0.1).init(params), next_count=1,
    ...     worker_index=0)
    >>> zeta = extrap_optax.adam_moment_extrapolation(0.9, 0.98, 1e-9)(context)
    >>> print(np.asarray(zeta).round(4))
    [ 1. -1.]
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
    communication: communication_lib.Communication | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""EXTRAP-ADAM (Lin et al., ICML 2020, Algorithm 3, App. D.2).

  Worker :math:`k` computes its gradient at :math:`z^k = y_t - \hat\gamma
  \zeta^k` (the parameters it holds), with :math:`\zeta^k` =
  `adam_moment_extrapolation` of its previous local gradient; the shared point
  :math:`y` takes a standard bias-corrected Adam step (`optax.adam`) on the
  averaged gradient :math:`\bar g = \operatorname{pmean}_k g^k`, and the
  moments see :math:`\bar g` only:

  .. math::

    m_t = \beta_1 m + (1-\beta_1) \bar g, \quad
    v_t = \beta_2 v + (1-\beta_2) \bar g^2, \quad
    y_{t+1} = y_t - \gamma_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.

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
    communication: how the workers communicate (default
      ``synchronous(axis_name)``; `periodic_averaging` for local steps,
      `periodic_outer_step` for DiLoCo); pass it or `axis_name`, not both.
    debug_checks: check at run time that the workers' gradients differ (see
      `extrapolate`).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `evaluation_params` gives y_t.

  Raises:
    ValueError: for a negative `learning_rate`, `eps` or `extrapolation_rate`,
      or `b1`, `b2` outside [0, 1) (named).

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, Algorithm 3
    and App. D.2.
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`__, ICLR 2015.

  Examples:
    One worker: the first step is Adam's; the worker then holds
    :math:`z_1 = y_1 - \hat\gamma \zeta_1`.

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import extrap_optax
    >>> tx = extrap_optax.extrap_adam(0.1, extrapolation_rate=0.5)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([2.0]), state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> y = extrap_optax.evaluation_params(params, state)
    >>> print(round(float(y[0]), 4), round(float(params[0]), 4))
    0.9 0.4
  """
  _check_adam_args(learning_rate, b1, b2, eps)
  return extrapolation.extrapolate(
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
      adam_moment_extrapolation(b1, b2, eps, paper_literal=paper_literal),
      extrapolation_rate, axis_name=axis_name, communication=communication,
      debug_checks=debug_checks)
