"""The gradient all-reduce over the worker axes and the worker index."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import validation


class AllReduceMeanState(NamedTuple):
  """`all_reduce_mean` keeps no state."""


def worker_index(axis_name: validation.AxisName | None) -> jax.Array:
  """The linear index k of this worker over the (possibly several) worker axes.

  With a tuple of axes the index is row-major over them, which matches the order
  of the stacked leading axis used by `extrap_optax.Workers`.
  """
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  validation.check_axis_bound(axis_name, "`worker_index`")
  return jax.lax.axis_index(axis_name)


def mean_over_workers(tree, axis_name: validation.AxisName | None, where: str):
  """`pmean` of a pytree over the worker axes (identity for one worker)."""
  if axis_name is None:
    return tree
  validation.check_axis_bound(axis_name, where)
  return jax.lax.pmean(tree, axis_name)


def all_reduce_mean(
    axis_name: validation.AxisName | None,
) -> optax.GradientTransformation:
  """Averages the updates (gradients) over the worker axes: ḡ = (1/K) Σ_k g^k.

  This is the single collective of synchronous data-parallel SGD (paper, eq. 1).
  Chain it first, before any transformation that must see the averaged gradient.

  Args:
    axis_name: the worker axis name or a tuple of names (e.g.
      `extrap_optax.Workers(...).axis_name`); `None` means one worker.

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  axis_name = validation.normalize_axis_name(axis_name)

  def init_fn(params):
    del params
    return AllReduceMeanState()

  def update_fn(updates, state, params=None):
    del params
    return mean_over_workers(updates, axis_name, "`all_reduce_mean.update`"), state

  return optax.GradientTransformation(init_fn, update_fn)
