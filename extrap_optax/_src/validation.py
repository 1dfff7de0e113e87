"""Argument checks shared by the factories: clear errors that name the argument and the fix."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

AxisName = str | tuple[str, ...]


def is_concrete_number(value: Any) -> bool:
  """True for Python/NumPy numbers; False for jax arrays and tracers (not checked)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_non_negative(name: str, value: Any) -> None:
  """Raises if a float (or schedule's first value) is negative.

  Tracers and arrays pass unchecked: `optax.inject_hyperparams` hands them in.
  """
  if callable(value):
    value = value(0)
    if not is_concrete_number(value):
      try:
        value = float(value)
      except (TypeError, jax.errors.ConcretizationTypeError):
        return
  if is_concrete_number(value) and value < 0:
    raise ValueError(
        f"`{name}` must be non-negative, got {value}. Pass a value >= 0 (or a "
        "schedule whose values are >= 0).")


def check_momentum(momentum: Any) -> None:
  if is_concrete_number(momentum) and not 0.0 <= momentum < 1.0:
    raise ValueError(
        f"`momentum` must lie in [0, 1), got {momentum}: 1 or more never "
        "forgets a gradient and diverges. The paper uses 0.9.")


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def normalize_axis_name(axis_name: AxisName | Sequence[str] | None) -> AxisName | None:
  """Accepts None, a name, or a sequence of names; returns None, a str or a tuple."""
  if axis_name is None or isinstance(axis_name, str):
    return axis_name
  names = tuple(axis_name)
  if not names or not all(isinstance(n, str) for n in names):
    raise ValueError(
        f"`axis_name` must be None, a string or a non-empty tuple of strings, got "
        f"{axis_name!r}.")
  return names


def _unbound_axis(axis_name: AxisName) -> str | None:
  """The first of the worker axes not bound in the current trace, or None."""
  for name in (axis_name,) if isinstance(axis_name, str) else axis_name:
    try:
      jax.lax.axis_index(name)
    except NameError:
      return name
  return None


def is_axis_bound(axis_name: AxisName) -> bool:
  """Whether every worker axis is bound here (inside the mapped step)."""
  return _unbound_axis(axis_name) is None


def check_axis_bound(axis_name: AxisName, where: str) -> None:
  """Raises a clear error if a worker axis is not bound in the current trace."""
  name = _unbound_axis(axis_name)
  if name is not None:
    raise ValueError(
        f"axis_name={axis_name!r}: the axis {name!r} is not bound where {where} "
        f"is called. Call it inside `jax.vmap(..., axis_name={name!r})`, "
        f"`jax.shard_map` over a mesh with an axis {name!r}, or "
        f"`jax.pmap(..., axis_name={name!r})`; under plain `jax.jit` with "
        f"sharded inputs, map the per-worker step with `jax.vmap(..., "
        f"axis_name={name!r}, spmd_axis_name=<mesh axis>)` "
        "(`extrap_optax.Workers(...).map` binds the worker axes for you). For "
        "a single worker pass axis_name=None.")


def check_mask(name: str, mask: Any) -> None:
  """Raises when the optimizer is built if `mask` cannot be a mask.

  A mask is None, one bool for every tensor, a callable params -> mask, or a
  pytree of static bools (True where the transformation applies). Whether a
  pytree mask has the structure of the parameters can only be checked when
  they are known, at `init` (`resolve_mask`).
  """
  if mask is None or callable(mask) or isinstance(mask, (bool, np.bool_)):
    return
  leaves = jax.tree.leaves(mask)
  bad = [leaf for leaf in leaves if not isinstance(leaf, (bool, np.bool_))]
  if bad:
    raise ValueError(
        f"`{name}` must be None, True/False, a callable params -> mask, or a "
        f"pytree of Python bools with the structure of the parameters; got "
        f"a leaf of type {type(bad[0]).__name__} ({bad[0]!r}). Build one with e.g. `jax.tree.map(lambda p: "
        "p.ndim >= 2, params)`, or pass `extrap_optax.matrices_only`.")


def resolve_mask(name: str, mask: Any, params: optax.Params) -> Any:
  """The mask as a pytree of Python bools with the structure of `params`.

  Args:
    name: the argument's name, for errors.
    mask: a mask accepted by `check_mask` (None means True everywhere).
    params: the parameters (or any tree with their structure).

  Returns:
    A pytree of Python bools with the structure of `params`.

  Raises:
    ValueError: naming `name`, if the mask (or what the callable returns)
      does not have the structure of `params` or has non-bool leaves.
  """
  tree = True if mask is None else mask
  if callable(tree):
    tree = tree(params)
  if isinstance(tree, (bool, np.bool_)):
    return jax.tree.map(lambda _: bool(tree), params)
  mask_structure = jax.tree.structure(tree)
  params_structure = jax.tree.structure(params)
  if mask_structure != params_structure:
    raise ValueError(
        f"`{name}` must have the same tree structure as the parameters (one bool "
        f"per parameter array) or be a callable params -> mask.\n  {name}: "
        f"{mask_structure}\n  params: {params_structure}")
  leaves = jax.tree.leaves(tree)
  if not all(isinstance(m, (bool, np.bool_)) for m in leaves):
    raise ValueError(
        f"`{name}` leaves must be static Python booleans (True where the "
        f"transformation applies), got {[type(m).__name__ for m in leaves]}. "
        "Build it with e.g. `jax.tree.map(lambda p: p.ndim >= 2, params)`.")
  return jax.tree.map(bool, tree)
