"""The gradient all-reduce over the worker axes, and the worker index."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import validation


class AllReduceMeanState(NamedTuple):
  """The (empty) state of `all_reduce_mean`."""


def worker_index(axis_name: validation.AxisName | None) -> jax.Array:
  r"""The linear index :math:`k` of this worker over the worker axes.

  With a tuple of axes the index is row-major over them, which matches the order
  of the stacked leading axis of `Workers`: worker :math:`k` is row :math:`k`
  of every stacked array.

  Args:
    axis_name: the worker axis name or tuple of names bound by the enclosing
      `jax.vmap`, `jax.shard_map` or `jax.pmap` (e.g. `Workers.axis_name`);
      `None` means one worker.

  Returns:
    An int32 scalar in :math:`[0, K)`; 0 for one worker.

  Raises:
    ValueError: if an axis of `axis_name` is not bound where it is called.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=4)
    >>> def add_index(x):
    ...   return x + extrap_optax.worker_index(workers.axis_name)
    >>> print(workers.map(add_index)(jnp.full(4, 10)).tolist())
    [10, 11, 12, 13]
  """
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  validation.check_axis_bound(axis_name, "`worker_index`")
  return jax.lax.axis_index(axis_name)


def mean_over_workers(tree, axis_name: validation.AxisName | None, where: str):
  """`jax.lax.pmean` of a pytree over the worker axes (identity for one worker).

  `where` names the caller in the error for an unbound axis.
  """
  if axis_name is None:
    return tree
  validation.check_axis_bound(axis_name, where)
  return jax.lax.pmean(tree, axis_name)


def all_reduce_mean(
    axis_name: validation.AxisName | None,
) -> optax.GradientTransformation:
  r"""Averages the updates (gradients) over the worker axes.

  .. math::

    \bar g = \frac{1}{K} \sum_{k=1}^{K} g^k,

  the single collective of synchronous data-parallel SGD (paper, eq. 1), as a
  `jax.lax.pmean` over `axis_name`. Chain it first, before any transformation
  that must see the averaged gradient: `minibatch_sgd` is
  ``optax.chain(all_reduce_mean(axis_name), nesterov_sgd(...))``.

  Args:
    axis_name: the worker axis name or a tuple of names (e.g.
      `Workers.axis_name`); `None` means one worker, and the updates pass
      unchanged.

  Returns:
    A stateless `optax.GradientTransformation`.

  Raises:
    ValueError: for a malformed `axis_name`, or, when `update` runs, an axis
      that is not bound there.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`_, ICML 2020, eq. 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=4)
    >>> tx = extrap_optax.all_reduce_mean(workers.axis_name)
    >>> def mean_gradient(grads):
    ...   return tx.update(grads, tx.init(grads))[0]
    >>> grads = jnp.array([[1.0], [2.0], [3.0], [6.0]])   # one row per worker
    >>> print(workers.map(mean_gradient)(grads).ravel().tolist())
    [3.0, 3.0, 3.0, 3.0]
  """
  axis_name = validation.normalize_axis_name(axis_name)

  def init_fn(params):
    del params
    return AllReduceMeanState()

  def update_fn(updates, state, params=None):
    del params
    return mean_over_workers(updates, axis_name, "`all_reduce_mean.update`"), state

  return optax.GradientTransformation(init_fn, update_fn)
