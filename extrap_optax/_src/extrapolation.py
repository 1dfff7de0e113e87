"""The extrapolated-SGD framework: any base optax transformation, extrapolated.

Lin, Kong, Stich and Jaggi, "Extrapolation for Large-batch Training in Deep
Learning", ICML 2020, §3 and Algorithm 1.

One step on worker k, with y_t the shared point, z^k_t = y_t + δ^k_t its
extrapolation point (the parameters the worker holds), and ζ a perturbation source:

    g^k      = ∇f(z^k; local batch)              # the caller's gradient at `params`
    ḡ        = pmean(g^k)                        # the only collective
    u, s'    = base.update(ḡ, s, y_t)            # e.g. coupled L2 + Nesterov + −γ_t
    y_{t+1}  = y_t + u
    δ^k_{t+1} = −γ̂_{t+1} · ζ^k_{t+1}             # ζ formed from g^k, ḡ, y_{t+1}, ...
    updates  = u + (δ^k_{t+1} − δ^k_t)           # so params become z^k_{t+1}

δ_0 = 0: the first step is not extrapolated (the paper's footnote 1). With the
PyTorch/optax Nesterov base, y_t is the paper's x_{t+1/2} without the local
extrapolation; with a constant γ this is algebraically Algorithm 1.

**Choice**: the state stores y_t rather than the offset δ^k_t. It is the same
memory (one parameter-sized buffer per worker), but the shared point is then
bit-identical on every worker (it is computed from identical values only) and
does not drift by rounding as z − δ would; δ^k_t = params − y_t is recomputed
each step. With γ̂ = 0 the offsets are exactly zero and the trajectory is bit for
bit that of `chain(all_reduce_mean(axis_name), base)`: the same floating-point
operations in the same order. That holds op by op (`jax.disable_jit()`); two
different jit-compiled programs may still round the last bit differently,
because XLA fuses them differently (e.g. the order of a vmapped `pmean`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import collectives
from extrap_optax._src import perturbations
from extrap_optax._src import validation

ScalarOrSchedule = float | jax.Array | optax.Schedule


class ExtrapolationState(NamedTuple):
  """State of an extrapolated transformation on one worker.

  Attributes:
    count: the step t (number of updates applied).
    shared_params: y_t, the shared point, equal on all workers (identical
      across workers except on local steps of post-local SGD). Use it for
      evaluation and checkpoints: `extrap_optax.evaluation_params`.
    base_state: the state of the base transformation (e.g. the momentum buffer).
  """
  count: jax.Array
  shared_params: optax.Params
  base_state: optax.OptState


class LocalSteps(NamedTuple):
  """Post-local SGD phase (Lin et al., 2020): local steps from `start_step` on.

  Attributes:
    start_step: t0; steps t < t0 are synchronous (gradient `pmean`).
    sync_period: H; from t0 on, parameters are averaged after every H local steps.
  """
  start_step: int
  sync_period: int


def _value_at(rate: ScalarOrSchedule, count: jax.Array) -> Any:
  return rate(count) if callable(rate) else rate


def _scaled_offset(rate: Any, direction: optax.Updates) -> optax.Updates:
  return jax.tree.map(lambda z: (-rate * z).astype(z.dtype), direction)


def make_extrapolated(
    base: optax.GradientTransformation,
    perturbation: perturbations.Perturbation,
    extrapolation_rate: ScalarOrSchedule,
    axis_name: validation.AxisName | None,
    local_steps: LocalSteps | None,
) -> optax.GradientTransformationExtraArgs:
  """Shared implementation of `extrapolate` and `post_local_sgd`."""
  validation.check_non_negative("extrapolation_rate", extrapolation_rate)
  axis_name = validation.normalize_axis_name(axis_name)
  base = optax.with_extra_args_support(base)

  def init_fn(params: optax.Params) -> ExtrapolationState:
    # A copy, so that `params` and the state can both be donated to a jitted step.
    shared = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
    return ExtrapolationState(
        count=jnp.zeros((), jnp.int32), shared_params=shared,
        base_state=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "Extrapolated transformations need `params` (the worker's parameters): "
          "call `tx.update(grads, state, params)`.")
    grads = updates
    shared = state.shared_params
    offset = jax.tree.map(jnp.subtract, params, shared)
    count = state.count

    caller = "the extrapolated transformation's `update`"
    if local_steps is None:
      mean_grads = collectives.mean_over_workers(grads, axis_name, caller)
    else:
      # Only the collectives sit inside conditionals, so that local steps
      # communicate nothing and the update itself is computed once, in place.
      mean_grads = jax.lax.cond(
          count < local_steps.start_step,
          lambda g: collectives.mean_over_workers(g, axis_name, caller),
          lambda g: g, grads)
    base_updates, base_state = base.update(
        mean_grads, state.base_state, shared, **extra_args)
    next_shared = optax.apply_updates(shared, base_updates)
    step = base_updates
    if local_steps is not None:
      steps_since_start = count - local_steps.start_step + 1
      is_averaging = (count >= local_steps.start_step) & (
          steps_since_start % local_steps.sync_period == 0)
      next_shared = jax.lax.cond(
          is_averaging,
          lambda y: collectives.mean_over_workers(y, axis_name, caller),
          lambda y: y, next_shared)
      step = jax.tree.map(
          lambda new, old, u: jnp.where(is_averaging, new - old, u),
          next_shared, shared, base_updates)

    next_count = optax.safe_increment(count)
    context = perturbations.PerturbationContext(
        local_grads=grads, mean_grads=mean_grads, params=shared,
        next_params=next_shared, base_state=state.base_state,
        next_base_state=base_state, next_count=next_count,
        worker_index=collectives.worker_index(axis_name))
    next_offset = _scaled_offset(
        _value_at(extrapolation_rate, next_count), perturbation(context))
    param_updates = jax.tree.map(
        lambda s, new, old: (s + (new - old)).astype(s.dtype),
        step, next_offset, offset)
    return param_updates, ExtrapolationState(
        count=next_count, shared_params=next_shared, base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def extrapolate(
    base: optax.GradientTransformation,
    perturbation: perturbations.Perturbation,
    extrapolation_rate: ScalarOrSchedule,
    *,
    axis_name: validation.AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Turns a base transformation into its extrapolated form (paper §3.2).

  The caller computes the gradient at the parameters it holds, which are the
  worker's extrapolation point z^k_t = y_t − γ̂_t·ζ^k_t, and applies the returned
  updates as usual. This transformation averages the gradient over `axis_name`
  (the single collective, as in mini-batch SGD), steps the shared point y with
  `base` on the averaged gradient, and moves the worker to its next
  extrapolation point. See the module docstring for the equations.

  Args:
    base: the optimizer of the shared point, e.g.
      `optax.chain(optax.add_decayed_weights(λ), optax.sgd(γ, 0.9, nesterov=True))`.
      It receives the averaged gradient and `params=y_t`.
    perturbation: the source of ζ, e.g. `extrap_optax.past_gradient()`.
    extrapolation_rate: γ̂, a float or an `optax.Schedule` of the step.
      ζ^k_{t+1} is scaled by γ̂_{t+1}. The paper uses γ̂_t ≈ c·γ_t/K
      (`extrap_optax.extrapolation_rate_schedule`).
    axis_name: the worker axis name or tuple of names over which to `pmean`, or
      `None` for a single worker (extrapolation from the past, Gidel et al. 2018).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is an
    `ExtrapolationState`; extra keyword arguments of `update` go to `base`.
  """
  return make_extrapolated(base, perturbation, extrapolation_rate, axis_name, None)


def evaluation_params(params: optax.Params, state: optax.OptState) -> optax.Params:
  """The shared point y_t to evaluate and checkpoint, given a worker's params and state.

  Works with the state of any transformation of this package, also nested inside
  `optax.chain`, `optax.inject_hyperparams` or `optax.MultiSteps`. For a state with
  no extrapolation (e.g. mini-batch SGD) the parameters are the shared point and
  are returned unchanged. Works on per-worker stacked trees too.

  Args:
    params: the parameters the worker holds (its extrapolation point).
    state: the optimizer state that `update` returned with them.

  Returns:
    y_t, a tree like `params`.
  """
  found = optax.tree_utils.tree_get(state, "ExtrapolationState")
  if found is None:
    return params
  return found.shared_params
