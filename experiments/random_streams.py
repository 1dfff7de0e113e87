"""Independent random streams of one seed, one per purpose.

Every random key of a run derives from `jax.random.key(seed)` with a tag
folded in first, a 31-bit hash of the purpose's name, and then the indices
the purpose needs (epoch, step, worker, ...):

    stream_key(seed, "shuffle")  ->  fold_in(key(seed), crc32("...shuffle"))

so keys of different purposes never coincide: not at the same indices (the
tags differ) and not at different depths of `fold_in` (both are outputs of
the threefry hash of different inputs). Small integer tags (0, 1, 2, ...)
would collide: `fold_in(key(seed), 1)` would be both "stream 1" and "step 1 of
stream 0's parent".
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

PURPOSES = (
    "init",        # model parameters
    "partition",   # which examples each worker owns
    "shuffle",     # each worker's order within an epoch
    "augment",     # random crops and flips
    "dropout",     # per step and worker
    "noise",       # the extrapolation noise of the noise methods
)


def tag(purpose: str) -> int:
  """The 31-bit tag of `purpose` (one of `PURPOSES`).

  Raises:
    ValueError: an unknown purpose.
  """
  if purpose not in PURPOSES:
    raise ValueError(f"Unknown random stream {purpose!r}; the streams are "
                     f"{', '.join(PURPOSES)}.")
  return zlib.crc32(f"extrap_optax.experiments/{purpose}".encode()) & 0x7FFFFFFF


def stream_key(seed: int, purpose: str) -> jax.Array:
  """The root key of `purpose` for the run's `seed`."""
  return jax.random.fold_in(jax.random.key(seed), tag(purpose))


def stream_seed(seed: int, purpose: str) -> int:
  """A Python int seed of `purpose`, for APIs that take an int seed.

  `extrap_optax.noise_extrap_sgd(seed=...)` derives its keys as
  `fold_in(fold_in(key(seed), step), worker)`: given the run's own seed it
  would share the root key of the other streams; given this one, its root
  is a key of its own.
  """
  bits = jax.random.bits(stream_key(seed, purpose), (), np.uint32)
  return int(bits) & 0x7FFFFFFF
