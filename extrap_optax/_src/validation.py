"""Argument checks shared by the factories: clear errors that name the argument and the fix."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
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
        f"`momentum` must lie in [0, 1), got {momentum}. The paper uses 0.9.")


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


def check_axis_bound(axis_name: AxisName, where: str) -> None:
  """Raises a clear error if a worker axis is not bound in the current trace."""
  for name in (axis_name,) if isinstance(axis_name, str) else axis_name:
    try:
      jax.lax.axis_index(name)
    except NameError:
      raise ValueError(
          f"axis_name={axis_name!r}: the axis {name!r} is not bound where {where} "
          f"is called. Call it inside `jax.vmap(..., axis_name={name!r})`, "
          f"`jax.shard_map` over a mesh with an axis {name!r}, or "
          f"`jax.pmap(..., axis_name={name!r})` (`extrap_optax.Workers(...).map` "
          "binds the worker axes for you); for a single worker pass "
          "axis_name=None.") from None


def check_mask_matches(name: str, mask: Any, params: optax.Params) -> None:
  """Raises if a pytree mask (not a callable) does not have the structure of params."""
  if mask is None or isinstance(mask, Callable):
    return
  mask_structure = jax.tree.structure(mask)
  params_structure = jax.tree.structure(params)
  if mask_structure != params_structure:
    raise ValueError(
        f"`{name}` must have the same tree structure as the parameters (one bool "
        f"per parameter array) or be a callable params -> mask.\n  {name}: "
        f"{mask_structure}\n  params: {params_structure}")
