r"""Mini-batch SGD and the extrapolated-SGD family, ready to use.

All share one base step for the shared point :math:`y` (see
:ref:`momentum-convention`, :ref:`extrap-sgd` and :ref:`weight-decay`):

.. math::

  d = \bar g + \lambda y, \qquad
  b \leftarrow u b + d, \qquad
  y \leftarrow y - \gamma_t (d + u b)
  \quad (\texttt{nesterov=False}: y \leftarrow y - \gamma_t b),

with the coupled L2 masked (no decay on tensors with ndim < 2), which is
``optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(γ, u,
nesterov=nesterov))`` on the averaged gradient :math:`\bar g =
\operatorname{pmean}_k g^k`, and equals ``torch.optim.SGD(lr=γ, momentum=u,
nesterov=nesterov, weight_decay=λ)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import optax

from extrap_optax._src import collectives
from extrap_optax._src import communication as communication_lib
from extrap_optax._src import extrapolation
from extrap_optax._src import lars
from extrap_optax._src import perturbations
from extrap_optax._src import validation

ScalarOrSchedule = extrapolation.ScalarOrSchedule
MaskOrFn = Any | Callable[[optax.Params], Any] | None


def decay_mask(mask: MaskOrFn) -> Callable[[optax.Params], Any]:
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
  r"""The base step (no communication): coupled L2 [+ LARS] + momentum + −γ_t.

  .. math::

    d = g + \lambda y \ \ (\text{or } \mathrm{LARC}(g, y)), \qquad
    b \leftarrow u b + d, \qquad
    y \leftarrow y - \gamma_t (d + u b)
    \quad (\texttt{nesterov=False}: y \leftarrow y - \gamma_t b).

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    momentum: u in [0, 1); 0 gives plain SGD.
    nesterov: Nesterov momentum (default, the paper's), or heavy-ball momentum
      for False; both in the PyTorch/optax form above.
    weight_decay: λ >= 0, added to the gradient (coupled L2, as PyTorch SGD).
    weight_decay_mask: True/False for every tensor, a pytree of bools like the
      params, or a callable params -> such a tree; `None` (default) decays the
      tensors with ndim >= 2 (`matrices_only`). Checked when the optimizer is
      built; its structure is checked against the params at `init`.
    trust_coefficient: LARS trust coefficient γ̃ >= 0 (paper: 0.02, tuned in
      {0.01, 0.02, 0.03}) to scale the decayed gradient per tensor as NVIDIA apex
      LARC does (`scale_by_larc`, see :ref:`lars`), or `None` for no LARS.

  Returns:
    ``optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(γ, u,
    nesterov=nesterov))``, with ``scale_by_larc(γ, trust_coefficient=γ̃,
    weight_decay=λ)`` in place of the decay when LARS is on.

  Raises:
    ValueError: naming the argument, for a negative `learning_rate` or
      `weight_decay`, a `momentum` outside [0, 1), a non-bool `nesterov`, or a
      `weight_decay_mask` that is not a mask.

  References:
    Sutskever et al., `On the importance of initialization and momentum in
    deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`__,
    ICML 2013.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §5 and App. C.

  Examples:
    The first step of Nesterov momentum is :math:`-\gamma (1 + u) d`:

    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> tx = extrap_optax.nesterov_sgd(0.5, momentum=0.5)
    >>> params = {"w": jnp.array([[1.0]]), "b": jnp.array([1.0])}
    >>> grads = {"w": jnp.array([[2.0]]), "b": jnp.array([2.0])}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> print(updates["w"].tolist(), updates["b"].tolist())
    [[-1.5]] [-1.5]
  """
  validation.check_non_negative("learning_rate", learning_rate)
  validation.check_momentum(momentum)
  validation.check_bool("nesterov", nesterov)
  validation.check_non_negative("weight_decay", weight_decay)
  weight_decay_mask = decay_mask(weight_decay_mask)
  if trust_coefficient is None:
    preprocess = optax.add_decayed_weights(weight_decay, weight_decay_mask)
  else:
    preprocess = lars.scale_by_larc(
        learning_rate, trust_coefficient=trust_coefficient,
        weight_decay=weight_decay, weight_decay_mask=weight_decay_mask)
  # A literal 0 drops the buffer; an injected (traced) momentum keeps it.
  no_momentum = validation.is_concrete_number(momentum) and momentum == 0
  chained = optax.chain(
      preprocess,
      optax.sgd(learning_rate, momentum=None if no_momentum else momentum,
                nesterov=nesterov and not no_momentum),
  )
  no_decay = validation.is_concrete_number(weight_decay) and weight_decay == 0
  preprocessed = trust_coefficient is not None or not no_decay
  if nesterov and preprocessed and not no_momentum:
    return _preprocessed_gradient_recomputed(chained, preprocess,
                                             learning_rate, momentum)
  return chained


def _preprocessed_gradient_recomputed(
    chained: optax.GradientTransformationExtraArgs,
    preprocess: optax.GradientTransformation,
    learning_rate: ScalarOrSchedule,
    momentum: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""`chained` (decay or LARC, then Nesterov SGD), bit for bit, without a temporary.

  Nesterov momentum reads the preprocessed gradient :math:`d` (:math:`g +
  \lambda y`, or LARC's scaled one) twice, in :math:`b' = d + u b` and in the
  step :math:`d + u b'`. XLA:CPU then writes :math:`d` to a fresh
  parameter-sized buffer and reads it back (3.2x the time of `optax.sgd` on a
  100M-parameter tree, `benchmarks.optimizer_cost`). Here the step's
  :math:`d` is computed again from the same gradient and parameters, passed
  through `jax.lax.optimization_barrier` so that XLA cannot merge the two:
  each is fused into its consumer, and the operations, hence the bits, are
  optax's (for LARC the two norms are computed twice: two reads, no write).
  """
  scale = optax.scale_by_learning_rate(learning_rate)

  def update_fn(updates, state, params=None, **extra_args):
    _, next_state = chained.update(updates, state, params, **extra_args)
    preprocess_state, (_, scale_state) = state
    grads, params_again = jax.lax.optimization_barrier((updates, params))
    preprocessed, _ = preprocess.update(grads, preprocess_state, params_again)
    next_trace = next_state[1][0].trace
    # optax.trace's Nesterov step, g + decay * t, on the same operands.
    direction = jax.tree.map(lambda g, t: g + momentum * t, preprocessed,
                             next_trace)
    steps, _ = scale.update(direction, scale_state)
    return steps, next_state

  return optax.GradientTransformationExtraArgs(chained.init, update_fn)


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
  """Mini-batch SGD with Nesterov momentum over K workers (paper §5, eq. 1).

  One `pmean` of the gradient over `axis_name`, then `nesterov_sgd`. The
  baseline of the paper ("mini-batch SGD" means with Nesterov momentum), and
  EXTRAP-SGD with `extrapolation_rate=0` (the same shared point, bit for bit
  op by op; see `extrapolate` for the workers' parameters).

  Args:
    learning_rate: γ, a float or an `optax.Schedule`.
    momentum, nesterov, weight_decay, weight_decay_mask, trust_coefficient:
      the base step's, as in `nesterov_sgd`.
    axis_name: the worker axis name(s), or `None` for one worker (as in
      `extrapolate`).

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: for a bad hyperparameter, naming it.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §5, eq. 1.
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`__, 2017.

  Examples:
    Two workers with gradients 1 and 3 take the step of their mean, 2:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=2)
    >>> tx = extrap_optax.minibatch_sgd(0.5, momentum=0.0,
    ...                                 axis_name=workers.axis_name)
    >>> def step(params, grads):
    ...   updates, _ = tx.update(grads, tx.init(params), params)
    ...   return optax.apply_updates(params, updates)
    >>> params = workers.replicate(jnp.zeros(1))
    >>> print(workers.map(step)(params, workers.put(jnp.array([[1.0], [3.0]])))
    ...       .ravel().tolist())
    [-1.0, -1.0]
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
    communication: communication_lib.Communication | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Extrapolated SGD (paper §3.2) with any perturbation source ζ.

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
    momentum, nesterov, weight_decay, weight_decay_mask, trust_coefficient:
      the base step's, as in `nesterov_sgd`.
    axis_name, communication, debug_checks: the workers and how they
      communicate, as in `extrapolate`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `evaluation_params(params, state)`
    gives y_t.

  Raises:
    ValueError: for a bad hyperparameter, naming it.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.2.

  Examples:
    Extrapolated SGD with anisotropic gradient noise, :math:`\zeta^k = g^k -
    \bar g`, which is 0 for one worker: the worker stays at :math:`y`.

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import extrap_optax
    >>> tx = extrap_optax.extrapolated_sgd(
    ...     0.5, perturbation=extrap_optax.gradient_noise(),
    ...     extrapolation_rate=0.25, momentum=0.0)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([1.0]), state, params)
    >>> print(optax.apply_updates(params, updates).tolist())
    [0.5]
  """
  return extrapolation.extrapolate(
      nesterov_sgd(learning_rate, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                   trust_coefficient=trust_coefficient),
      perturbation, extrapolation_rate, axis_name=axis_name,
      communication=communication,
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
    communication: communication_lib.Communication | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""EXTRAP-SGD (Lin et al., ICML 2020, Algorithm 1).

  On worker :math:`k`, with :math:`y_t` the shared point and
  :math:`g^k_{t-1}` the worker's previous local mini-batch gradient
  (:math:`g_{-1} = 0`):

  .. math::

    \begin{aligned}
    z^k_t &= y_t - \hat\gamma_t \zeta^k_t, \quad \zeta^k_t = g^k_{t-1}
      && \text{extrapolation from the past}\\
    g^k_t &= \nabla f(z^k_t;\ \text{local batch})
      && \text{computed by the caller at its params}\\
    \bar g_t &= \operatorname{pmean}_k g^k_t && \text{the only collective}\\
    d &= \bar g_t + \lambda y_t, \quad b \leftarrow u b + d, \quad
      y_{t+1} = y_t - \gamma_t (d + u b).
    \end{aligned}

  (with ``nesterov=False``, :math:`y_{t+1} = y_t - \gamma_t b`). The
  parameters a worker holds are :math:`z^k`; ``evaluation_params(params,
  state)`` is :math:`y`. ``extrapolation_rate=0`` gives `minibatch_sgd`'s
  :math:`y` bit for bit op by op (:math:`z` up to one rounding; see
  `extrapolate`). With ``axis_name=None`` it is single-worker extrapolation from
  the past (Gidel et al., 2018) with Nesterov momentum.

  **In a data-parallel training script** (the README's "Use it in your
  training script" has the diff for pmap, shard_map, jit and Flax NNX), four
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
     ``jax.value_and_grad``/``DynamicScale`` with ``axis_name``, no ``pmean``
     inside the loss. This transformation averages over ``axis_name`` itself
     and needs each worker's own :math:`g^k`; given averaged gradients every
     worker extrapolates with :math:`\bar g`, a different algorithm (and a
     ``pmean`` inside the loss divides each :math:`g^k` by K). Inside
     ``jax.shard_map`` (with its default ``check_vma=True``) averaged
     gradients are an error when the step is traced; elsewhere
     ``debug_checks=True`` raises at run time when the workers' gradients
     agree to 1e-3 (relative) while extrapolating, at the cost of a host
     callback per step and no extra collective.
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
  `extrapolation_scaling`:

  * "none" (default): ζ^k = g^k_{t−1}, the raw past gradient, with
    γ̂_t = c·γ_t/K, c in {1, 2, 4}: paper §3.1 (past gradients let γ̂ "directly
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
    momentum, nesterov, weight_decay, weight_decay_mask, trust_coefficient:
      the base step's, as in `nesterov_sgd`.
      The paper's: u = 0.9, λ = 1e-4 for ResNet-20, γ̃ = 0.02; with
      "trust_ratio" the mask also selects where λ_j = λ in ζ.
    extrapolation_scaling: "none" (raw past gradient, paper §3.1) or
      "trust_ratio" (LARS-scaled past gradient, App. C.1); see above and
      :ref:`extrapolation-scale`.
    axis_name, communication, debug_checks: the workers and how they
      communicate, as in `extrapolate`.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state holds y_t
    (`evaluation_params`).

  Raises:
    ValueError: naming the argument and the fix, for an
      `extrapolation_scaling` other than "none" or "trust_ratio", a negative
      rate, weight decay or learning rate, a momentum outside [0, 1), or a
      `weight_decay_mask` that is not a mask (when the optimizer is built) or
      does not match the params (at `init`).

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.1, Algorithm 1,
    Theorem 4.4, Remark 4.5, Corollary 4.6 and App. C.1.
    Gidel et al., `A Variational Inequality Perspective on Generative
    Adversarial Networks <https://arxiv.org/abs/1802.10551>`__, 2018.

  Examples:
    One worker: the first step is Nesterov SGD's; the worker then holds
    :math:`z_1 = y_1 - \hat\gamma g_0`, and the second gradient is taken there.

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import extrap_optax
    >>> tx = extrap_optax.extrap_sgd(0.5, extrapolation_rate=0.25, momentum=0.5)
    >>> params = jnp.array([2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([1.0]), state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> print(extrap_optax.evaluation_params(params, state).tolist(),
    ...       params.tolist())   # y_1 = 2 - 0.5 * 1.5 * 1, z_1 = y_1 - 0.25 * 1
    [1.25] [1.0]
  """
  if extrapolation_scaling not in perturbations.PAST_GRADIENT_SCALINGS:
    raise ValueError(
        "`extrapolation_scaling` must be one of "
        f"{perturbations.PAST_GRADIENT_SCALINGS}, got {extrapolation_scaling!r}.")
  perturbation = perturbations.past_gradient(
      extrapolation_scaling, weight_decay=weight_decay,
      weight_decay_mask=decay_mask(weight_decay_mask))
  return extrapolated_sgd(
      learning_rate, perturbation=perturbation,
      extrapolation_rate=extrapolation_rate, momentum=momentum,
      nesterov=nesterov, weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask, trust_coefficient=trust_coefficient,
      axis_name=axis_name, communication=communication,
      debug_checks=debug_checks)


def noise_extrap_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    extrapolation_rate: ScalarOrSchedule,
    noise: Literal["uniform", "gaussian", "smoothout", "gradient"] = "uniform",
    seed: int | jax.Array = 0,
    generator: Literal["threefry", "counter_hash"] = "threefry",
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskOrFn = None,
    trust_coefficient: float | None = None,
    axis_name: validation.AxisName | None = None,
    communication: communication_lib.Communication | None = None,
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
    generator: the random generator of "uniform", "gaussian" and
      "smoothout": "threefry" (JAX's default) or "counter_hash", a
      counter-based hash computed inside the fused update at a small fraction
      of threefry's cost on CPU; a different stream (see `filterwise_noise`).
    momentum, nesterov, weight_decay, weight_decay_mask, trust_coefficient:
      the base step's, as in `nesterov_sgd`.
    axis_name, communication, debug_checks: the workers and how they
      communicate, as in `extrapolate`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for an unknown `noise`, or a bad hyperparameter (named).

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.2 and
    Table 1.
    Wen et al., `SmoothOut: Smoothing Out Sharp Minima to Improve
    Generalization in Deep Learning <https://arxiv.org/abs/1805.07898>`__,
    2018.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import extrap_optax
    >>> tx = extrap_optax.noise_extrap_sgd(
    ...     0.1, extrapolation_rate=0.01, noise="gaussian", seed=3)
    >>> params = {"kernel": jnp.ones((4, 2))}
    >>> updates, state = tx.update({"kernel": jnp.zeros((4, 2))},
    ...                            tx.init(params), params)
    >>> offset = updates["kernel"]   # the step is 0: only the extrapolation
    >>> print(np.linalg.norm(offset, axis=0).round(4))   # 0.01 * ‖y_j‖
    [0.02 0.02]
  """
  sources = {
      "uniform": lambda: perturbations.filterwise_noise(
          seed, distribution="uniform", generator=generator),
      "gaussian": lambda: perturbations.filterwise_noise(
          seed, distribution="gaussian", generator=generator),
      "smoothout": lambda: perturbations.smoothout_noise(
          seed, generator=generator),
      "gradient": perturbations.gradient_noise,
  }
  if noise not in sources:
    raise ValueError(f"`noise` must be one of {sorted(sources)}, got {noise!r}.")
  return extrapolated_sgd(
      learning_rate, perturbation=sources[noise](),
      extrapolation_rate=extrapolation_rate, momentum=momentum,
      nesterov=nesterov, weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask, trust_coefficient=trust_coefficient,
      axis_name=axis_name, communication=communication,
      debug_checks=debug_checks)
