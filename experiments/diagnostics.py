"""What the trainer measures besides losses: extrapolation ratios, smoothness.

- `extrapolation_ratios`: per tensor, how far the next gradient's point z is
  from the shared point y, relative to y's last step (every step of an
  extrapolated method);
- `smoothness`: the smoothness L of one step's update (Figure 1b), through
  `extrap_optax.smoothness_probe`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import extrap_optax
from experiments import worker_arrays


def extrapolation_ratios(params: Any, opt_state: Any, next_params: Any,
                         next_opt_state: Any) -> dict[str, jax.Array]:
  """How far each tensor is extrapolated, relative to the step just taken.

  Per tensor j, r_j = ‖z_{t+1,j} − y_{t+1,j}‖ / ‖y_{t+1,j} − y_{t,j}‖: the
  length of the extrapolation for the next gradient against the length of the
  shared point's last update (tensors that did not move are left out). One
  worker's view; the trainer averages it over workers.

  Returns:
    `extrapolation_ratio_median` and `extrapolation_ratio_max` over tensors.
  """
  shared = extrap_optax.evaluation_params(params, opt_state)
  next_shared = extrap_optax.evaluation_params(next_params, next_opt_state)

  def norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))

  offsets = jnp.stack(jax.tree.leaves(jax.tree.map(
      lambda z, y: norm(z - y), next_params, next_shared)))
  steps = jnp.stack(jax.tree.leaves(jax.tree.map(
      lambda new, old: norm(new - old), next_shared, shared)))
  moved = steps > 0
  ratios = jnp.where(moved, offsets / jnp.where(moved, steps, 1.0), jnp.nan)
  return {"extrapolation_ratio_median": jnp.nan_to_num(jnp.nanmedian(ratios)),
          "extrapolation_ratio_max": jnp.nan_to_num(jnp.nanmax(ratios))}


def smoothness(workers: extrap_optax.Workers,
               mean_gradient: Callable[[Any], Any], before: Any,
               after: Any, *, num_steps: int, step_fraction: float) -> float:
  """The smoothness L of the update `after - before` of worker 0's y.

  Args:
    workers: the run's workers.
    mean_gradient: stacked parameters -> the stacked mean gradient of the
      step's global mini-batch (`Workers.map`ped).
    before: worker 0's shared point before the step (numpy).
    after: worker 0's shared point after the step (numpy).
    num_steps: points probed along the update.
    step_fraction: how far along it they go.

  The probe's gradient evaluations run one program at a time from the host:
  unrolled into one program XLA:CPU keeps all of them live (22 GB for
  ResNet-20 on 8 devices), and in a `lax.map` loop it runs convolutions 27x
  slower.
  """
  update = jax.tree.map(np.subtract, after, before)
  return float(extrap_optax.smoothness_probe(
      lambda p: worker_arrays.worker0(mean_gradient(workers.replicate(p))),
      before, update, num_steps=num_steps, step_fraction=step_fraction))
