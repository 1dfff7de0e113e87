"""Moving stacked per-worker arrays between the host and the workers' devices.

A stacked tree has one row per worker (`extrap_optax.Workers`). On several
hosts (jax.distributed) each process holds the rows of its own workers:
`place` puts a host batch there, and `host`/`worker0` read replicated or
worker-0 values back on every process. `resize` continues a training state
saved by another number of workers.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax


def local_worker_rows(workers: extrap_optax.Workers) -> np.ndarray:
  """The workers (rows of a stacked batch) whose devices this process owns."""
  process = jax.process_index()
  return np.array([k for k in range(workers.num_workers)
                   if workers.devices[k // workers.workers_per_device]
                   .process_index == process])


def place(workers: extrap_optax.Workers, stacked: Any) -> Any:
  """Places a host (K, ...) batch; multi-host, each process gives its own rows."""
  if jax.process_count() == 1:
    return workers.put(stacked)
  rows = local_worker_rows(workers)
  return workers.put_process_local(jax.tree.map(lambda x: x[rows], stacked))


def host(tree: Any) -> Any:
  """A replicated (or single-device) tree as numpy, on every process."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def worker0(tree: Any) -> Any:
  """Worker 0's copy of a stacked tree, as numpy, on every process."""
  leaves = jax.tree.leaves(tree)
  if all(x.is_fully_addressable for x in leaves):
    return jax.tree.map(lambda x: x[0], host(tree))
  # Multi-host: a process's first shard holds its own first worker (worker 4
  # of 8 on process 1), so worker 0's row is first replicated everywhere.
  return host(first_row(leaves[0].sharding.mesh)(tree))


_FIRST_ROW_FNS: dict[Any, Any] = {}


def first_row(mesh: jax.sharding.Mesh | None) -> Any:
  """A jitted `tree -> row 0 of each leaf`, replicated over `mesh` if any."""
  if mesh not in _FIRST_ROW_FNS:
    _FIRST_ROW_FNS[mesh] = jax.jit(
        lambda t: jax.tree.map(lambda x: x[0], t),
        out_shardings=None if mesh is None else NamedSharding(mesh, P()))
  return _FIRST_ROW_FNS[mesh]


def resize(workers: extrap_optax.Workers, saved: dict[str, Any],
           notes: list[str]) -> dict[str, Any]:
  """A training state saved by K workers, continued on `workers`' K' (elastic).

  The rule of `extrap_optax.resize_workers`: synchronous state carried over,
  per-worker state (local models, BatchNorm statistics) averaged, every
  worker restarting at the shared point as on step 0. A note saying so is
  appended to `notes` (and printed).
  """
  old = jax.tree.leaves(saved)[0].shape[0]
  params, (opt_state, model_state) = extrap_optax.resize_workers(
      saved["params"], (saved["opt_state"], saved["model_state"]),
      workers.num_workers)
  notes.append(f"resumed from a checkpoint of {old} workers on "
               f"{workers.num_workers} (extrap_optax.resize_workers)")
  print(f"note: {notes[-1]}", file=sys.stderr)
  return {"params": workers.put(params), "opt_state": workers.put(opt_state),
          "model_state": workers.put(model_state)}
