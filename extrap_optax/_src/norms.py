"""Euclidean norms in at least float32, of one array or of a whole pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def norm(x: jax.Array) -> jax.Array:
  """‖x‖₂ of one array, accumulated in at least float32 (bfloat16 would lose it)."""
  return jnp.sqrt(jnp.sum(jnp.square(_wide(x))))


def tree_squared_norm(tree: Any) -> jax.Array:
  """Σ‖x‖₂² over the leaves of a pytree, in at least float32."""
  return sum((jnp.sum(jnp.square(_wide(x))) for x in jax.tree.leaves(tree)),
             jnp.zeros((), jnp.float32))


def tree_norm(tree: Any) -> jax.Array:
  """‖tree‖₂ over all its leaves, in at least float32."""
  return jnp.sqrt(tree_squared_norm(tree))
