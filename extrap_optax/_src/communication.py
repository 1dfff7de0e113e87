r"""How the workers communicate: synchronous, periodic averaging, periodic outer steps.

The extrapolated update (`extrapolate`) steps each worker's copy of the shared
point :math:`y^k` with its base transformation and leaves the communication to
a `Communication` policy, which makes two decisions each step :math:`t`:

1. **which gradient the base step sees** (`Communication.mean_gradients`): the
   average :math:`\bar g_t = \operatorname{pmean}_k g^k_t` (one all-reduce of
   gradients), or the worker's own :math:`g^k_t` (a local step, no
   communication);
2. **what becomes of the new models** (`Communication.synchronize`): kept as
   they are, replaced by their average, or replaced by an outer optimizer's
   step on the workers' averaged change.

=========================== ============================================ ==========================
policy                      per step                                     every :math:`H` local steps
=========================== ============================================ ==========================
`synchronous`               :math:`\bar g` (one gradient all-reduce)     --
`periodic_averaging`        :math:`\bar g` before :math:`t_0`, then      :math:`y^k \leftarrow \operatorname{pmean}_k y^k`
                            :math:`g^k` (post-local SGD)
`periodic_outer_step`       as `periodic_averaging` (DiLoCo)             :math:`\theta \leftarrow \theta +
                                                                         \mathrm{outer}(\theta - \operatorname{pmean}_k y^k)`,
                                                                         :math:`y^k \leftarrow \theta`
=========================== ============================================ ==========================

Between averaging rounds of the two local policies the K workers hold K
different models; the model to evaluate is then their average
(`evaluation_params`, which reads the policy from the optimizer state).

References:
  Lin et al., `Don't Use Large Mini-Batches, Use Local SGD
  <https://arxiv.org/abs/1808.07217>`__, ICLR 2020 (post-local SGD).
  Douillard et al., `DiLoCo: Distributed Low-Communication Training of
  Language Models <https://arxiv.org/abs/2311.08105>`__, 2023, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import collectives
from extrap_optax._src import trees
from extrap_optax._src import validation


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SynchronousState:
  """State of `synchronous`: nothing but the (static) worker axes."""
  axis_name: validation.AxisName | None = dataclasses.field(
      metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PeriodicAveragingState:
  """State of `periodic_averaging`: nothing but the (static) worker axes."""
  axis_name: validation.AxisName | None = dataclasses.field(
      metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PeriodicOuterStepState:
  r"""State of `periodic_outer_step`.

  Attributes:
    outer_params: :math:`\theta`, the outer (global) model: the shared point
      at the start of the current round, identical on every worker.
    outer_state: the outer optimizer's state, identical on every worker.
    axis_name: the worker axes (static).
  """
  outer_params: optax.Params
  outer_state: optax.OptState
  axis_name: validation.AxisName | None = dataclasses.field(
      metadata=dict(static=True))


CommunicationState = (SynchronousState | PeriodicAveragingState
                      | PeriodicOuterStepState)


@dataclasses.dataclass(frozen=True)
class Communication:
  """A communication policy: what `extrapolate` calls around the base step.

  Attributes:
    axis_name: the worker axis name(s), or None for one worker.
    init: params -> the policy's state (kept in `ExtrapolationState`).
    mean_gradients: (grads, count) -> the gradient the base step sees at step
      `count`, and a bool scalar, True where it is averaged over workers.
    synchronize: (new shared point, state, count) -> the shared point the
      next step starts from, and the new state.
  """
  axis_name: validation.AxisName | None
  init: Callable[[optax.Params], CommunicationState]
  mean_gradients: Callable[[optax.Updates, jax.Array],
                           tuple[optax.Updates, jax.Array]]
  synchronize: Callable[[optax.Params, CommunicationState, jax.Array],
                        tuple[optax.Params, CommunicationState]]


def _where(what: str) -> str:
  return f"the {what} of the extrapolated transformation's `update`"


def synchronous(axis_name: validation.AxisName | None) -> Communication:
  r"""Synchronous data parallelism: one gradient all-reduce per step.

  .. math::

    \bar g_t = \operatorname{pmean}_k g^k_t, \qquad y_{t+1} = y_t + u_t
    \ \text{(the same on every worker)}.

  The default of `extrapolate` and of every optimizer of this package.

  Args:
    axis_name: the worker axis name or tuple of names (e.g.
      `Workers.axis_name`); None for one worker (no collective).

  Returns:
    A `Communication`.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, eq. 1.

  Examples:
    The default of every optimizer: written out, EXTRAP-SGD on two workers.

    >>> import jax.numpy as jnp, optax
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=2)
    >>> tx = extrap_optax.extrapolate(
    ...     optax.sgd(0.5), extrap_optax.past_gradient(), 0.25,
    ...     communication=extrap_optax.synchronous(workers.axis_name))
    >>> def step(params, state, grads):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   return extrap_optax.evaluation_params(params, state)
    >>> params = workers.replicate(jnp.zeros(1))
    >>> state = workers.map(tx.init)(params)
    >>> grads = workers.put(jnp.array([[1.0], [3.0]]))
    >>> print(workers.map(step)(params, state, grads).ravel().tolist())
    [-1.0, -1.0]
  """
  axis_name = validation.normalize_axis_name(axis_name)

  def mean_gradients(grads, count):
    del count
    return (collectives.mean_over_workers(grads, axis_name, _where("gradient mean")),
            jnp.asarray(axis_name is not None))

  def synchronize(next_shared, state, count):
    del count
    return next_shared, state

  return Communication(axis_name, lambda params: SynchronousState(axis_name),
                       mean_gradients, synchronize)


def _check_schedule(start_step: int, sync_period: int) -> None:
  for name, value, minimum in (("start_step", start_step, 0),
                               ("sync_period", sync_period, 1)):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def _local_gradients(axis_name, start_step: int):
  """Averaged gradients before `start_step`, the worker's own from then on.

  With `start_step` = 0 no gradient collective is traced at all; otherwise it
  sits in one branch of a `lax.cond`, so that the local steps execute none.
  """
  def mean_gradients(grads, count):
    if start_step == 0 or axis_name is None:
      return grads, jnp.asarray(False)
    synchronous = count < start_step
    return jax.lax.cond(
        synchronous,
        lambda g: collectives.mean_over_workers(g, axis_name,
                                                _where("gradient mean")),
        lambda g: g, grads), synchronous

  return mean_gradients


def _is_round_end(count: jax.Array, start_step: int, sync_period: int):
  """True after every `sync_period` local steps counted from `start_step`."""
  return (count >= start_step) & ((count - start_step + 1) % sync_period == 0)


def periodic_averaging(
    axis_name: validation.AxisName | None,
    *,
    sync_period: int,
    start_step: int = 0,
) -> Communication:
  r"""Local steps, with the workers' models averaged every :math:`H` steps.

  Steps :math:`t < t_0` are synchronous (`synchronous`). From :math:`t_0` on
  each worker steps its own model :math:`y^k` with its own gradient and its
  own base state (no communication), and after every :math:`H` local steps
  the models are replaced by their average (one all-reduce of parameters):

  .. math::

    y^k_{t+1} = \begin{cases}
      \operatorname{pmean}_k \big(y^k_t + u^k_t\big)
        & \text{if } t \ge t_0 \text{ and } (t - t_0 + 1) \bmod H = 0,\\
      y^k_t + u^k_t & \text{otherwise.}
    \end{cases}

  Post-local SGD (Lin et al., ICLR 2020) with :math:`t_0` > 0; local SGD with
  :math:`t_0 = 0`. The base state (momentum buffers) is never averaged.
  :math:`H = 1` is synchronous training up to rounding for a base step linear
  in the gradient (not LARS, not Adam).

  **Communication.** With one worker per device (`Workers` with K <= devices:
  `shard_map` or `pmap`) the local steps execute no collective: the gradient
  all-reduce (only traced when :math:`t_0 > 0`) and the parameter average sit
  in `lax.cond` branches. With several virtual workers per device (`vmap`),
  the step count is per worker and vmap turns each `cond` into a `select`
  that evaluates both branches: the same result, but the average is computed
  on every step. See :ref:`post-local-sgd`.

  Args:
    axis_name: the worker axis name(s), or None for one worker.
    sync_period: :math:`H \ge 1`, local steps between averages.
    start_step: :math:`t_0 \ge 0`, the first local step.

  Returns:
    A `Communication`.

  Raises:
    ValueError: for a `sync_period` < 1 or a negative `start_step`.

  References:
    Lin et al., `Don't Use Large Mini-Batches, Use Local SGD
    <https://arxiv.org/abs/1808.07217>`__, ICLR 2020.

  Examples:
    Local SGD on two workers, averaged every second step: the models differ
    after step 1 and are one again after step 2.

    >>> import jax.numpy as jnp, optax
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=2)
    >>> tx = extrap_optax.extrapolate(
    ...     optax.sgd(0.5), extrap_optax.past_gradient(), 0.0,
    ...     communication=extrap_optax.periodic_averaging(
    ...         workers.axis_name, sync_period=2))
    >>> def step(params, state, grads):
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params = workers.replicate(jnp.zeros(1))
    >>> state = workers.map(tx.init)(params)
    >>> grads = workers.put(jnp.array([[1.0], [3.0]]))
    >>> for _ in range(2):
    ...   params, state = workers.map(step)(params, state, grads)
    ...   print(params.ravel().tolist())
    [-0.5, -1.5]
    [-2.0, -2.0]
  """
  axis_name = validation.normalize_axis_name(axis_name)
  _check_schedule(start_step, sync_period)

  def synchronize(next_shared, state, count):
    if axis_name is None:
      return next_shared, state
    averaged = jax.lax.cond(
        _is_round_end(count, start_step, sync_period),
        lambda y: collectives.mean_over_workers(y, axis_name,
                                                _where("model average")),
        lambda y: y, next_shared)
    return averaged, state

  return Communication(
      axis_name, lambda params: PeriodicAveragingState(axis_name),
      _local_gradients(axis_name, start_step), synchronize)


def periodic_outer_step(
    axis_name: validation.AxisName | None,
    *,
    outer_optimizer: optax.GradientTransformation,
    sync_period: int,
    start_step: int = 0,
) -> Communication:
  r"""Local steps, then an outer optimizer's step every :math:`H` steps (DiLoCo).

  As `periodic_averaging`, but at the end of each round of :math:`H` local
  steps the workers' averaged change is the gradient of an outer optimizer
  acting on the outer model :math:`\theta` (the shared point at the start of
  the round):

  .. math::

    \Delta = \theta - \operatorname{pmean}_k y^k, \qquad
    v, s \leftarrow \mathrm{outer.update}(\Delta, s, \theta), \qquad
    \theta \leftarrow \theta + v, \qquad y^k \leftarrow \theta.

  DiLoCo (Douillard et al., 2023) uses Nesterov momentum,
  ``optax.sgd(0.7, momentum=0.9, nesterov=True)``, :math:`H = 500` and AdamW
  as the base (inner) optimizer (`extrap_optax.diloco`). With
  ``optax.sgd(1.0)`` the outer step is :math:`\theta - \Delta =
  \operatorname{pmean}_k y^k`: `periodic_averaging`, up to rounding.

  :math:`\theta` and the outer state are kept in the optimizer state
  (`PeriodicOuterStepState`, identical on every worker: one parameter buffer
  plus the outer optimizer's state). Steps :math:`t < t_0` are synchronous,
  and :math:`\theta` is taken from the shared point at :math:`t_0`.
  Communication as in `periodic_averaging`.

  Args:
    axis_name: the worker axis name(s), or None for one worker.
    outer_optimizer: any optax transformation; its `update` receives
      :math:`\Delta` and ``params=θ``.
    sync_period: :math:`H \ge 1`, local steps per round.
    start_step: :math:`t_0 \ge 0`, the first local step.

  Returns:
    A `Communication`.

  Raises:
    ValueError: for a `sync_period` < 1, a negative `start_step` or an
      `outer_optimizer` that is not an optax transformation.

  References:
    Douillard et al., `DiLoCo: Distributed Low-Communication Training of
    Language Models <https://arxiv.org/abs/2311.08105>`__, 2023,
    Algorithm 1.

  Examples:
    Two workers, one round of two local steps, then an outer SGD step at
    rate 0.5 on the averaged change Δ = θ − mean(y^k) = 2: θ = 0 − 0.5·2.

    >>> import jax.numpy as jnp, optax
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=2)
    >>> tx = extrap_optax.extrapolate(
    ...     optax.sgd(0.5), extrap_optax.past_gradient(), 0.0,
    ...     communication=extrap_optax.periodic_outer_step(
    ...         workers.axis_name, sync_period=2,
    ...         outer_optimizer=optax.sgd(0.5)))
    >>> def step(params, state, grads):
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params = workers.replicate(jnp.zeros(1))
    >>> state = workers.map(tx.init)(params)
    >>> grads = workers.put(jnp.array([[1.0], [3.0]]))
    >>> for _ in range(2):
    ...   params, state = workers.map(step)(params, state, grads)
    ...   print(params.ravel().tolist())
    [-0.5, -1.5]
    [-1.0, -1.0]
  """
  axis_name = validation.normalize_axis_name(axis_name)
  _check_schedule(start_step, sync_period)
  if not (hasattr(outer_optimizer, "init") and hasattr(outer_optimizer, "update")):
    raise ValueError(
        "`outer_optimizer` must be an optax GradientTransformation, e.g. "
        f"`optax.sgd(0.7, momentum=0.9, nesterov=True)`; got {outer_optimizer!r}.")

  def init(params):
    outer_params = trees.donatable_copy(params)
    return PeriodicOuterStepState(outer_params, outer_optimizer.init(params),
                                  axis_name)

  def outer_step(operands):
    next_shared, state = operands
    mean = collectives.mean_over_workers(next_shared, axis_name,
                                         _where("outer step"))
    delta = jax.tree.map(jnp.subtract, state.outer_params, mean)
    step, outer_state = outer_optimizer.update(delta, state.outer_state,
                                               state.outer_params)
    outer_params = optax.apply_updates(state.outer_params, step)
    return outer_params, PeriodicOuterStepState(outer_params, outer_state,
                                                axis_name)

  def synchronize(next_shared, state, count):
    if start_step > 0:
      # The round starting at t0 starts from the synchronous phase's model.
      state = jax.lax.cond(
          count + 1 == start_step,
          lambda s: dataclasses.replace(s, outer_params=next_shared),
          lambda s: s, state)
    return jax.lax.cond(_is_round_end(count, start_step, sync_period),
                        outer_step, lambda operands: operands,
                        (next_shared, state))

  return Communication(axis_name, init, _local_gradients(axis_name, start_step),
                       synchronize)


def averages_models(state: Any) -> bool:
  """Whether the workers' models differ between rounds (a local policy's state)."""
  return isinstance(state, (PeriodicAveragingState, PeriodicOuterStepState))
