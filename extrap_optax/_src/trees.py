"""Pytree helpers shared by the transformations."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def donatable_copy(tree: Any) -> Any:
  """A copy of `tree` in new buffers, so that it and its source can both be donated.

  Abstract leaves (`jax.ShapeDtypeStruct`, as `jax.eval_shape` passes to
  `init`) stay abstract.
  """
  return jax.tree.map(lambda p: p if isinstance(p, jax.ShapeDtypeStruct)
                      else jnp.array(p, copy=True), tree)
