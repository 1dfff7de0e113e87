r"""The extrapolated-SGD framework: any base optax transformation, extrapolated.

Each worker k holds its extrapolation point :math:`z^k_t = y_t + \delta^k_t`
and computes its gradient there; the shared point :math:`y_t` takes the base
transformation's step on the gradient averaged over workers, and the offset
:math:`\delta^k_{t+1} = -\hat\gamma_{t+1} \zeta^k_{t+1}` comes from a
perturbation source (`extrap_optax.past_gradient` for EXTRAP-SGD). The state
stores :math:`y_t` (see :ref:`shared-point`); the perturbation is formed at the
end of the step (see :ref:`perturbation-timing`).

References:
  Lin et al., `Extrapolation for Large-batch Training in Deep Learning
  <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3 and Algorithm 1.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from extrap_optax._src import collectives
from extrap_optax._src import communication as communication_lib
from extrap_optax._src import norms
from extrap_optax._src import perturbations
from extrap_optax._src import trees
from extrap_optax._src import validation

ScalarOrSchedule = float | jax.Array | optax.Schedule


class ExtrapolationState(NamedTuple):
  r"""State of an extrapolated transformation on one worker.

  Attributes:
    count: the step :math:`t`, the number of updates applied (int32).
    shared_params: :math:`y_t`, the shared point, identical on all workers
      (the worker's own model between the rounds of a local communication
      policy). `evaluation_params` reads it.
    base_state: the state of the base transformation (e.g. the momentum
      buffer), updated with the gradient the communication policy gives it.
    communication_state: the communication policy's state (see
      `extrap_optax.synchronous`, `periodic_averaging`, `periodic_outer_step`).
  """
  count: jax.Array
  shared_params: optax.Params
  base_state: optax.OptState
  communication_state: communication_lib.CommunicationState


def _value_at(rate: ScalarOrSchedule, count: jax.Array) -> Any:
  return rate(count) if callable(rate) else rate


# The relative distance ‖g^k − ḡ‖/‖ḡ‖ below which `debug_checks` takes the
# workers' gradients for averaged ones. The mean of K equal float32 values is
# within ~K·1.2e-7 of them; different local batches differ far more.
IDENTICAL_GRADIENTS_TOLERANCE = 1e-3


def _averaged_gradients_message(axis_name, when: str) -> str:
  return (
      f"The gradients given to the extrapolated optimizer's `update` {when} "
      f"over the worker axis {axis_name!r}: they were averaged before the "
      "optimizer (a `lax.pmean`/`psum` in the training step, "
      "`jax.value_and_grad`, `DynamicScale` or a loss with `axis_name=...`), "
      "or every worker got the same batch. The optimizer averages the "
      "gradients itself and extrapolates each worker from its own gradient "
      "g^k; with averaged gradients every worker extrapolates with the mean, "
      "a different algorithm. Remove the averaging of the gradients from the "
      "training step (averaging metrics is fine) and give each worker its own "
      "batch.")


def _varying_axes(x: Any) -> frozenset | None:
  """The manual mesh axes over which `x` varies, or None where JAX does not say.

  `shard_map` with `check_vma=True` types every value with the mesh axes over
  which it may differ between devices; `pmap`, `vmap` and `check_vma=False`
  track nothing (every set is empty).
  """
  aval = jax.typeof(x)
  manual_axis_type = getattr(aval, "manual_axis_type", None)
  if manual_axis_type is not None:
    return manual_axis_type.varying
  return getattr(aval, "vma", None)


def _check_not_averaged(grads: optax.Updates, axis_name) -> None:
  """Raises, when tracing, if the gradients provably agree on all workers.

  Only where JAX tracks variance (`shard_map` with `check_vma=True`): there a
  gradient that does not vary over the worker axes is the same on every
  worker on every step, which only an averaging does. Exact, and free: it
  reads types, not values.
  """
  names = frozenset((axis_name,) if isinstance(axis_name, str) else axis_name)
  tracked = _varying_axes(jax.lax.axis_index(axis_name))
  if tracked is None or not names <= tracked:
    return
  leaves = jax.tree.leaves(grads)
  if leaves and not any(names & (_varying_axes(g) or frozenset()) for g in leaves):
    raise ValueError(_averaged_gradients_message(
        axis_name, "do not vary (they have the same value on every worker)"))


def _raise_if_identical(identical: np.ndarray, count: np.ndarray, *, axis_name):
  if np.any(identical):
    step = int(np.max(count))
    raise ValueError(_averaged_gradients_message(
        axis_name, f"were identical on all workers at step {step} while "
        f"extrapolating (‖g^k − ḡ‖ <= {IDENTICAL_GRADIENTS_TOLERANCE:g}·‖ḡ‖, "
        "`debug_checks=True`)"))


def _debug_check_gradients_differ(grads, mean_grads, active, count, axis_name):
  """At run time, raises if a worker's gradient equals the mean (no collective)."""

  distance = norms.tree_squared_norm(
      jax.tree.map(jnp.subtract, grads, mean_grads))
  size = norms.tree_squared_norm(mean_grads)
  identical = active & (size > 0) & (
      distance <= IDENTICAL_GRADIENTS_TOLERANCE**2 * size)
  jax.debug.callback(
      functools.partial(_raise_if_identical, axis_name=axis_name),
      identical, count)


def extrapolate(
    base: optax.GradientTransformation,
    perturbation: perturbations.Perturbation,
    extrapolation_rate: ScalarOrSchedule,
    *,
    axis_name: validation.AxisName | None = None,
    communication: communication_lib.Communication | None = None,
    debug_checks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Turns a base transformation into its extrapolated form (paper §3.2).

  One step on worker :math:`k`, with :math:`y_t` the shared point,
  :math:`z^k_t = y_t + \delta^k_t` the parameters the worker holds (its
  extrapolation point) and :math:`\zeta` the perturbation source:

  .. math::

    \begin{aligned}
    g^k_t &= \nabla f(z^k_t) && \text{the caller's gradient, at its params}\\
    \bar g_t &= \operatorname{pmean}_k g^k_t && \text{the only collective}\\
    u_t, s_{t+1} &= \mathrm{base.update}(\bar g_t, s_t, y_t),
      \quad y_{t+1} = y_t + u_t\\
    \delta^k_{t+1} &= -\hat\gamma_{t+1}\, \zeta^k_{t+1}
      && \zeta \text{ formed from } g^k_t, \bar g_t, y_{t+1}, \dots\\
    \text{updates} &= u_t + (\delta^k_{t+1} - \delta^k_t)
      && \text{so the params become } z^k_{t+1}
    \end{aligned}

  with :math:`\delta_0 = 0`: the first step is not extrapolated (the paper's
  footnote 1). The averaging over workers is the `communication` policy's:
  `synchronous` (the default, the all-reduce above), `periodic_averaging`
  (local steps, post-local SGD) or `periodic_outer_step` (DiLoCo); every
  perturbation composes with every policy.

  **Rounding.** The shared point :math:`y` follows
  ``optax.chain(all_reduce_mean(axis_name), base)`` bit for bit, op by op,
  whatever γ̂. The updates are returned as
  :math:`(y_{t+1} + \delta^k_{t+1}) - z^k_t`, so the worker's parameters
  :math:`z^k_t + \text{updates}` equal :math:`y_{t+1} + \delta^k_{t+1}` up to
  one rounding of the subtraction and addition: with γ̂ = 0 they are
  :math:`y_{t+1}` bit for bit wherever :math:`y_{t+1}/2 \le y_t \le 2y_{t+1}`
  (Sterbenz's lemma: every element whose update is smaller than itself), and
  within one ulp of it elsewhere (see :ref:`shared-point`).

  Args:
    base: the optimizer of the shared point, e.g. ``optax.chain(
      optax.add_decayed_weights(λ), optax.sgd(γ, 0.9, nesterov=True))``. It
      receives the averaged gradient and ``params=y_t``.
    perturbation: the source of :math:`\zeta`, e.g. `past_gradient`; any
      function of a `PerturbationContext` returning a tree like the params.
    extrapolation_rate: :math:`\hat\gamma \ge 0`, a float or an
      `optax.Schedule` of the step; :math:`\zeta^k_{t+1}` is scaled by
      :math:`\hat\gamma_{t+1}`. The paper uses
      :math:`\hat\gamma_t \approx c\,\gamma_t/K`
      (`extrapolation_rate_schedule`; see :ref:`extrapolation-rate`).
    axis_name: the worker axis name or tuple of names over which to `pmean`,
      or `None` for a single worker (extrapolation from the past, Gidel et al.,
      2018); shorthand for ``communication=synchronous(axis_name)``.
    communication: how the workers communicate (a `Communication`:
      `synchronous`, `periodic_averaging`, `periodic_outer_step`); default
      ``synchronous(axis_name)``. It carries the worker axes: pass it or
      `axis_name`, not both.
    debug_checks: on every step where the next extrapolation rate is positive,
      compare each worker's gradient :math:`g^k` with the mean :math:`\bar g`
      the step computes anyway and raise (through `jax.debug.callback`, as a
      ``JaxRuntimeError`` whose message names the step) when
      :math:`\|g^k - \bar g\| \le 10^{-3} \|\bar g\|`: the gradients were
      averaged before the optimizer, or all workers saw the same batch. No
      extra collective; one host callback per step.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is an
    `ExtrapolationState`; extra keyword arguments of `update` go to `base`.

  Raises:
    ValueError: for a negative `extrapolation_rate`, a malformed `axis_name`,
      both `axis_name` and `communication`; when `update` runs, for a
      missing `params`, an unbound
      worker axis, or (inside `jax.shard_map` with ``check_vma=True``)
      gradients that do not vary over the worker axes, i.e. were averaged by
      the training step already.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.2.
    Gidel et al., `A Variational Inequality Perspective on Generative
    Adversarial Networks <https://arxiv.org/abs/1802.10551>`__, 2018.

  Examples:
    Extrapolate plain SGD from the past gradient: the first step is SGD's,
    and the worker then holds :math:`z_1 = y_1 - \hat\gamma g_0`.

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import extrap_optax
    >>> tx = extrap_optax.extrapolate(
    ...     optax.sgd(0.5), extrap_optax.past_gradient(), extrapolation_rate=0.25)
    >>> params = jnp.array([1.0, 2.0])
    >>> state = tx.init(params)
    >>> grads = jnp.array([1.0, -1.0])
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> print(extrap_optax.evaluation_params(params, state).tolist())   # y_1
    [0.5, 2.5]
    >>> print(params.tolist())   # z_1 = y_1 - 0.25 * g_0
    [0.25, 2.75]
  """
  validation.check_non_negative("extrapolation_rate", extrapolation_rate)
  validation.check_bool("debug_checks", debug_checks)
  if communication is None:
    communication = communication_lib.synchronous(axis_name)
  elif axis_name is not None:
    raise ValueError(
        f"Pass either `axis_name` ({axis_name!r}) or `communication`, not both: "
        "the communication policy carries the worker axes, e.g. "
        "`communication=extrap_optax.periodic_averaging(axis_name, "
        "sync_period=8)`.")
  elif not isinstance(communication, communication_lib.Communication):
    raise ValueError(
        "`communication` must be an `extrap_optax.Communication` (e.g. "
        "`extrap_optax.synchronous(axis_name)`, `periodic_averaging` or "
        f"`periodic_outer_step`), got {communication!r}.")
  axis_name = communication.axis_name
  base = optax.with_extra_args_support(base)
  caller = "the extrapolated transformation's `update`"
  # A literal zero rate never perturbs: the offset is not even formed.
  never_extrapolates = (validation.is_concrete_number(extrapolation_rate)
                        and extrapolation_rate == 0)

  def init_fn(params: optax.Params) -> ExtrapolationState:
    shared = trees.donatable_copy(params)
    return ExtrapolationState(
        count=jnp.zeros((), jnp.int32), shared_params=shared,
        base_state=base.init(params),
        communication_state=communication.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "Extrapolated transformations need `params` (the worker's parameters): "
          "call `tx.update(grads, state, params)`.")
    grads, shared, count = updates, state.shared_params, state.count
    if axis_name is not None:
      validation.check_axis_bound(axis_name, caller)
      if not never_extrapolates:
        _check_not_averaged(grads, axis_name)
    mean_grads, averaged = communication.mean_gradients(grads, count)
    base_updates, base_state = base.update(
        mean_grads, state.base_state, shared, **extra_args)
    next_shared, communication_state = communication.synchronize(
        optax.apply_updates(shared, base_updates), state.communication_state,
        count)
    next_count = optax.safe_increment(count)
    if never_extrapolates:
      next_point = next_shared
    else:
      context = perturbations.PerturbationContext(
          local_grads=grads, mean_grads=mean_grads, params=shared,
          next_params=next_shared, base_state=state.base_state,
          next_base_state=base_state, next_count=next_count,
          worker_index=collectives.worker_index(axis_name))
      next_rate = _value_at(extrapolation_rate, next_count)
      if debug_checks and axis_name is not None:
        _debug_check_gradients_differ(
            grads, mean_grads, averaged & (next_rate > 0), count, axis_name)
      next_point = jax.tree.map(
          lambda y, zeta: y - (next_rate * zeta).astype(y.dtype),
          next_shared, perturbation(context))
    # The worker moves to z_{t+1} = y_{t+1} + δ_{t+1}, written from the new
    # shared point rather than as u_t + δ_{t+1} − δ_t: each output is one
    # fused pass over its inputs, and no copy of the donated y_t is needed
    # (see :ref:`update-cost`).
    param_updates = jax.tree.map(lambda new, z: (new - z).astype(z.dtype),
                                 next_point, params)
    return param_updates, ExtrapolationState(
        count=next_count, shared_params=next_shared, base_state=base_state,
        communication_state=communication_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def evaluation_params(params: optax.Params, state: optax.OptState) -> optax.Params:
  r"""The model to evaluate and ship, for every optimizer of this package.

  - **Synchronous** methods: the shared point :math:`y_t`, which the state of
    every extrapolated transformation stores. The parameters a worker holds
    are its extrapolation point :math:`z^k_t = y_t + \delta^k_t`; evaluating
    them silently evaluates worker :math:`k`'s perturbed point.
  - **Local** methods (`periodic_averaging`, `periodic_outer_step`: post-local
    SGD, DiLoCo): between rounds the K workers hold K different models
    :math:`y^k_t`; the model is their average :math:`\frac{1}{K}\sum_k y^k_t`
    (at the end of a round, the averaged or outer model itself). Inside the
    mapped step this is one all-reduce over the policy's worker axes;
    outside it, on per-worker stacked trees, use `Workers.evaluation_params`
    (which averages the stacked rows), as this function then returns the
    stacked :math:`y^k_t`.
  - Anything else (e.g. `minibatch_sgd`, optax's own): ``params`` unchanged.

  The state is found anywhere in the optimizer state, also nested inside
  `optax.chain`, `optax.inject_hyperparams` or `optax.MultiSteps`. To resume
  training, checkpoint ``params`` and ``opt_state`` themselves, per worker
  (`check_per_worker`).

  Args:
    params: the parameters the worker holds (its extrapolation point).
    state: the optimizer state that `update` returned with them.

  Returns:
    The model to evaluate, a tree like `params`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import extrap_optax
    >>> tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=1.0, momentum=0.0)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([2.0]), state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> y = extrap_optax.evaluation_params(params, state)
    >>> print(f"y = {float(y[0]):.1f}, z = {float(params[0]):.1f}")
    y = 0.8, z = -1.2
    >>> sgd = extrap_optax.minibatch_sgd(0.1)
    >>> extrap_optax.evaluation_params(params, sgd.init(params)) is params
    True

    Local steps on four workers: inside the mapped step the model is the
    workers' average.

    >>> workers = extrap_optax.Workers(num_workers=4)
    >>> tx = extrap_optax.post_local_sgd(0.5, start_step=0, sync_period=4,
    ...                                  momentum=0.0,
    ...                                  axis_name=workers.axis_name)
    >>> def step(params, state, grads):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   return params, state, extrap_optax.evaluation_params(params, state)
    >>> params = workers.replicate(jnp.zeros(3))
    >>> state = workers.map(tx.init)(params)
    >>> grads = workers.put(jnp.arange(12.0).reshape(4, 3))
    >>> params, state, model = workers.map(step)(params, state, grads)
    >>> print(model[0].tolist())
    [-2.25, -2.75, -3.25]
  """
  found = _find_state(state)
  if found is None:
    return params
  axis_name = found.communication_state.axis_name
  if (communication_lib.averages_models(found.communication_state)
      and axis_name is not None and validation.is_axis_bound(axis_name)):
    return collectives.mean_over_workers(found.shared_params, axis_name,
                                         "`evaluation_params`")
  return found.shared_params


def averages_models(state: optax.OptState) -> bool:
  """Whether the model of `state` is the workers' average (a local policy).

  True for the states of `periodic_averaging` and `periodic_outer_step`
  (post-local SGD, DiLoCo), whose K workers hold K models between rounds;
  `Workers.evaluation_params` then averages the stacked rows.

  Args:
    state: an optimizer state (anywhere inside it an `ExtrapolationState`).

  Returns:
    A Python bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> params = jnp.zeros(2)
    >>> local = extrap_optax.post_local_sgd(0.1, start_step=0, sync_period=4)
    >>> extrap_optax.averages_models(local.init(params))
    True
    >>> extrap_optax.averages_models(extrap_optax.minibatch_sgd(0.1).init(params))
    False
  """
  found = _find_state(state)
  return found is not None and communication_lib.averages_models(
      found.communication_state)


def _find_state(state: optax.OptState) -> ExtrapolationState | None:
  return optax.tree_utils.tree_get(state, "ExtrapolationState")
