r"""Elastic restore: a training state of K workers continued on K' workers.

A job preempted on K workers may come back on a different number of devices.
The parameters and optimizer state of every worker are stacked along a leading
axis of size K (see `check_per_worker`); `resize_workers` maps them onto K'
workers. It is written over pytrees, without naming the fields of a state:

- a leaf whose K rows are identical is synchronous state (the shared point
  :math:`y`, the momentum buffer built from averaged gradients, the step
  count): its row is carried over to every new worker;
- a floating-point leaf whose rows differ is per-worker local state (e.g. the
  local models :math:`y^k` of post-local SGD between two averagings, or
  per-worker BatchNorm statistics): the new workers start from the mean over
  the old ones, the average that post-local SGD's next synchronisation would
  take;
- the parameters become the shared point :math:`y` read with
  `evaluation_params` (after the rule above), on every new worker: the
  per-worker offsets :math:`z^k - y = -\hat\gamma\,\zeta^k` are dropped, so the
  first step after the restore takes its gradients at :math:`y` and is not
  extrapolated, as on step 0, and the following steps extrapolate from the new
  workers' own gradients.

Nothing else changes: the step count, the schedules' position and the
randomness (noise keys are a function of the step and the worker index) carry
on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from extrap_optax._src import extrapolation


def _one_row(path, x: Any, num_workers: int) -> np.ndarray:
  """The row every new worker starts from, by the rules of the module docstring."""
  x = np.asarray(jax.device_get(x))
  if x.ndim == 0 or x.shape[0] != num_workers:
    raise ValueError(
        f"{jax.tree_util.keystr(path)} has shape {x.shape}, without a leading "
        f"worker axis of size K={num_workers}: pass the stacked per-worker "
        "trees as the training step returns them (see `check_per_worker`).")
  if all(np.array_equal(x[0], row) for row in x[1:]):
    return x[0]
  if not np.issubdtype(x.dtype, np.floating) and x.dtype != jnp.bfloat16:
    raise ValueError(
        f"{jax.tree_util.keystr(path)} ({x.dtype}) differs between workers and is "
        "not floating point: there is no average to restart the new workers from.")
  return np.mean(x, axis=0, dtype=np.float64).astype(x.dtype)


def resize_workers(params: Any, opt_state: Any, num_workers: int) -> tuple[Any, Any]:
  r"""Maps the stacked parameters and optimizer state of K workers onto K'.

  Synchronous state is carried over, per-worker local state is averaged, and
  every new worker restarts at the shared point :math:`y` with no offset (the
  extrapolation restarts as on step 0); see the module's rules above. The
  results are NumPy arrays: place them as the new run's step expects (e.g.
  `Workers.put`), or use them as the values of an orbax restore onto the new
  mesh.

  Args:
    params: the per-worker parameters, stacked (K, ...), e.g. restored from a
      checkpoint of K workers.
    opt_state: the per-worker optimizer state, stacked (K, ...).
    num_workers: K', the number of workers to continue on.

  Returns:
    ``(params, opt_state)`` stacked (K', ...).

  Raises:
    ValueError: for a `num_workers` that is not a positive int, a leaf without
      the leading worker axis, or a non-floating leaf that differs between
      workers.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, Algorithm 1 (the shared
    point :math:`y_t` and the local models :math:`z^k_t`); Lin et al., `Don't
    Use Large Mini-Batches, Use Local SGD <https://arxiv.org/abs/1808.07217>`__,
    ICLR 2020 (averaging the local models).

  Examples:
    A state of 4 workers continued on 2: both start at the shared point.

    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=4, backend="vmap")
    >>> tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.1,
    ...                              axis_name=workers.axis_name)
    >>> params = workers.replicate(jnp.zeros(1))
    >>> state = workers.map(tx.init)(params)
    >>> def step(p, s, g):
    ...   u, s = tx.update(g, s, p)
    ...   return p + u, s
    >>> params, state = workers.map(step)(params, state, jnp.arange(4.0)[:, None])
    >>> print([round(float(z), 3) for z in params.ravel()])  # z^k = y - 0.1 g^k
    [-0.285, -0.385, -0.485, -0.585]
    >>> params, state = extrap_optax.resize_workers(params, state, 2)
    >>> print([round(float(z), 3) for z in params.ravel()])  # y = -0.285
    [-0.285, -0.285]
  """
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"`num_workers` must be a positive int, got {num_workers!r}.")
  leaves = jax.tree.leaves(params)
  if not leaves or np.ndim(leaves[0]) == 0:
    raise ValueError("`params` must be stacked per worker, with a leading worker axis.")
  old_workers = np.shape(leaves[0])[0]
  state = jax.tree_util.tree_map_with_path(
      lambda path, x: _one_row(path, x, old_workers), opt_state)
  shared = extrapolation.evaluation_params(
      jax.tree_util.tree_map_with_path(
          lambda path, x: _one_row(path, x, old_workers), params), state)

  def stack(x):
    x = np.asarray(x)
    return np.broadcast_to(x, (num_workers,) + x.shape).copy()

  return jax.tree.map(stack, shared), jax.tree.map(stack, state)
