"""K data-parallel workers on whatever devices exist: vmap, shard_map or pmap.

Per-worker values (parameters, optimizer states, batches, BatchNorm statistics)
are stacked along a leading axis of size K, in worker order. The layout does not
depend on the number of devices, so a checkpoint taken on 8 GPUs resumes on 1 CPU.

Every backend binds the same two axis names, ``Workers.axis_name ==
("devices", "workers")``: K = D·V workers are D device blocks of V virtual
workers. A transform built with ``axis_name=workers.axis_name`` therefore runs
unchanged under all of them, and `pmean` over the pair is the mean over all K:

- "shard_map": `jax.shard_map` over a mesh. V = 1: one worker per device on a
  (D, 1) mesh, with no vmap; V > 1: `jax.vmap` inside each device.
- "pmap": `jax.pmap` over D devices of `jax.vmap` over V (for older scripts).
- "vmap": `jax.vmap` over all K on one device (D = 1).

One worker per device is the fastest layout, and it keeps control flow such as
post-local SGD's local steps free of collectives (under vmap a `lax.cond` on
per-worker state runs both branches). Virtual workers (V > 1) cost little with
models whose convolutions do not batch into one grouped convolution under
`jax.vmap`, which XLA:CPU runs several times slower than V separate ones: the
experiments' CIFAR models loop over the workers instead
(`experiments/models/convolution.py`; 1.1-1.2x one worker at batch K·B on the
2-core CPU, `benchmarks/virtual_workers.py`). See :ref:`data-parallelism`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from extrap_optax._src import extrapolation

Backend = Literal["shard_map", "pmap", "vmap"]
DEVICE_AXIS = "devices"
WORKER_AXIS = "workers"


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _per_arg_axes(in_axes: int | None | Sequence[int | None], num_args: int):
  if in_axes is None or isinstance(in_axes, int):
    return (in_axes,) * num_args
  in_axes = tuple(in_axes)
  if len(in_axes) != num_args:
    raise ValueError(
        f"`in_axes` has {len(in_axes)} entries but the function got {num_args} "
        "arguments: give one entry (0 = per worker, None = shared) per argument.")
  for axis in in_axes:
    if axis not in (0, None):
      raise ValueError(
          f"`in_axes` entries must be 0 (stacked per worker) or None (shared), got "
          f"{axis!r}.")
  return in_axes


class Workers:
  """K data-parallel workers, simulated or real, with one calling convention.

  `map` runs a function written for one worker on all K; inside it, the
  transforms of this package (built with ``axis_name=workers.axis_name``)
  average over the K workers. Per-worker values are stacked along a leading
  axis of size K; `replicate`, `split` and `put` place them, and
  `evaluation_params` reads the shared point back. D, the number of devices
  used, is the largest divisor of K that is at most the number of devices
  given (see :ref:`data-parallelism`).

  A training step::

    workers = extrap_optax.Workers(num_workers=16)          # 8 devices x 2
    tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.1 / 16,
                                 axis_name=workers.axis_name)
    params = workers.replicate(params)                     # (16, ...)
    opt_state = workers.map(tx.init)(params)

    def train_step(params, opt_state, batch):              # one worker's view
      grads = jax.grad(loss_fn)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    step = workers.map(train_step, donate_argnums=(0, 1))
    params, opt_state = step(params, opt_state, workers.split(global_batch))
    y = workers.evaluation_params(params, opt_state)       # the shared point

  Args:
    num_workers: K >= 1.
    backend: "shard_map" (default), "pmap" or "vmap" (all K on one device).
    devices: the devices to use; default `jax.devices()`.

  Attributes:
    num_workers: K.
    num_devices: D, the number of devices used.
    workers_per_device: V = K / D.
    axis_name: the pair of worker axis names bound by `map`,
      ``("devices", "workers")``.
    backend: "shard_map", "pmap" or "vmap".
    mesh: the device mesh (`None` for the vmap and pmap backends).
    sharding: where stacked per-worker arrays live.

  Raises:
    ValueError: for a `num_workers` that is not a positive int, an unknown
      `backend` or an empty `devices`.

  Examples:
    Four workers each compute the mean of their own slice of a batch; the
    `pmean` inside `map` averages over all four:

    >>> import jax, jax.numpy as jnp
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=4)
    >>> def local_and_global_mean(batch):
    ...   local = jnp.mean(batch)
    ...   return local, jax.lax.pmean(local, workers.axis_name)
    >>> local, overall = workers.map(local_and_global_mean)(
    ...     workers.split(jnp.arange(8.0)))
    >>> print(local.tolist(), overall.tolist())
    [0.5, 2.5, 4.5, 6.5] [3.5, 3.5, 3.5, 3.5]
  """

  def __init__(
      self,
      num_workers: int,
      *,
      backend: Backend = "shard_map",
      devices: Sequence[jax.Device] | None = None,
  ):
    if not isinstance(num_workers, int) or num_workers < 1:
      raise ValueError(f"`num_workers` must be a positive int, got {num_workers!r}.")
    if backend not in ("shard_map", "pmap", "vmap"):
      raise ValueError(
          f"`backend` must be 'shard_map', 'pmap' or 'vmap', got {backend!r}.")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
      raise ValueError("`devices` is empty: give at least one device.")
    self.num_workers = num_workers
    self.backend = backend
    self.num_devices = 1 if backend == "vmap" else _largest_divisor_at_most(
        num_workers, len(devices))
    self.workers_per_device = num_workers // self.num_devices
    self.axis_name = (DEVICE_AXIS, WORKER_AXIS)
    self.devices = devices[:self.num_devices]
    if backend == "shard_map":
      if self.workers_per_device == 1:
        self.mesh = Mesh(np.array(self.devices).reshape(-1, 1), self.axis_name)
        self._stacked_spec = P(self.axis_name)
      else:
        self.mesh = Mesh(np.array(self.devices), (DEVICE_AXIS,))
        self._stacked_spec = P(DEVICE_AXIS)
      self.sharding = NamedSharding(self.mesh, self._stacked_spec)
    else:
      self.mesh = None
      self.sharding = jax.sharding.SingleDeviceSharding(self.devices[0])

  def __repr__(self) -> str:
    return (f"Workers(num_workers={self.num_workers}, backend={self.backend!r}, "
            f"{self.num_devices} device(s) x {self.workers_per_device} worker(s))")

  # Placing data.

  def put(self, tree: Any) -> Any:
    """Places a stacked (K, ...) tree where `map` expects it."""
    self._check_leading(tree, "tree")
    if self.backend != "shard_map" or jax.process_count() == 1:
      return jax.device_put(tree, self.sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(
            np.shape(x), self.sharding, lambda index: np.asarray(x)[index]),
        tree)

  def put_process_local(self, tree: Any) -> Any:
    """Builds global (K, ...) arrays from this process's workers' slices.

    For multi-host runs (`jax.distributed`): each process passes the rows of the
    workers whose devices it owns, in order.
    """
    if self.backend != "shard_map":
      raise ValueError("`put_process_local` needs backend='shard_map'.")
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.sharding, np.asarray(x)),
        tree)

  def replicate(self, tree: Any) -> Any:
    """K copies of a tree, stacked along a new leading axis and placed."""
    return self.put(jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_workers,) + np.shape(x)),
        tree))

  def split(self, batch: Any) -> Any:
    """Splits a global batch (N, ...) into K worker batches (K, N/K, ...)."""

    def split_leaf(x):
      n = np.shape(x)[0] if np.ndim(x) else 0
      if n % self.num_workers:
        raise ValueError(
            f"`batch` has a leading size {n}, which the number of workers "
            f"K={self.num_workers} does not divide: use a global batch that is a "
            f"multiple of {self.num_workers} (K x local batch).")
      return np.reshape(np.asarray(x), (self.num_workers, n // self.num_workers)
                        + np.shape(x)[1:])

    return self.put(jax.tree.map(split_leaf, batch))

  # Reading results.

  @staticmethod
  def unreplicate(tree: Any) -> Any:
    """Worker 0's copy of a stacked tree (for values equal on all workers)."""
    return jax.tree.map(lambda x: x[0], tree)

  @staticmethod
  def mean(tree: Any) -> Any:
    """The mean over workers, e.g. of per-worker BatchNorm running statistics."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)

  def evaluation_params(self, params: Any, opt_state: Any) -> Any:
    """The model to evaluate, unstacked (see `extrap_optax.evaluation_params`).

    The shared point y_t for synchronous methods; for local ones
    (`periodic_averaging`, `periodic_outer_step`) the average of the workers'
    stacked models.
    """
    model = extrapolation.evaluation_params(params, opt_state)
    if extrapolation.averages_models(opt_state):
      return self.mean(model)
    return self.unreplicate(model)

  # Running per-worker code.

  def map(
      self,
      fn: Callable[..., Any],
      *,
      in_axes: int | None | Sequence[int | None] = 0,
      donate_argnums: int | Sequence[int] = (),
  ) -> Callable[..., Any]:
    """Runs `fn`, written for one worker, on all K workers; returns a jitted function.

    Inside `fn`, collectives over `self.axis_name` (such as the gradient `pmean`
    of the transforms of this package) reduce over all K workers.

    Args:
      fn: a function of one worker's arguments.
      in_axes: per argument, 0 for arguments stacked per worker (K, ...) or None
        for arguments shared by all workers (e.g. the step number).
      donate_argnums: arguments whose buffers the step may reuse.

    Returns:
      A function of the stacked arguments returning stacked outputs (K, ...).
    """
    if self.backend == "vmap":
      return self._map_vmap(fn, in_axes, donate_argnums)
    if self.backend == "pmap":
      return self._map_pmap(fn, in_axes, donate_argnums)
    return self._map_shard_map(fn, in_axes, donate_argnums)

  def _check_leading(self, tree: Any, name: str) -> None:
    for leaf in jax.tree.leaves(tree):
      if np.ndim(leaf) == 0 or np.shape(leaf)[0] != self.num_workers:
        raise ValueError(
            f"`{name}` must be stacked per worker with a leading axis of size "
            f"K={self.num_workers}, got a leaf of shape {np.shape(leaf)}. Use "
            "`replicate` for a single copy or `split` for a global batch.")

  def _map_vmap(self, fn, in_axes, donate_argnums):
    def run(*args):
      axes = _per_arg_axes(in_axes, len(args))
      inner = jax.vmap(fn, in_axes=axes, axis_name=WORKER_AXIS)
      outer = jax.vmap(inner, in_axes=axes, axis_name=DEVICE_AXIS)
      args = [a if ax is None else jax.tree.map(lambda x: x[None], a)
              for a, ax in zip(args, axes)]
      return jax.tree.map(lambda x: x[0], outer(*args))

    return jax.jit(run, donate_argnums=donate_argnums)

  def _map_pmap(self, fn, in_axes, donate_argnums):
    d, v = self.num_devices, self.workers_per_device
    blocks_sharding = NamedSharding(Mesh(np.array(self.devices), (DEVICE_AXIS,)), P(DEVICE_AXIS))
    cache = {}

    def run(*args):
      axes = _per_arg_axes(in_axes, len(args))
      if axes not in cache:
        cache[axes] = jax.pmap(
            jax.vmap(fn, in_axes=axes, axis_name=WORKER_AXIS),
            axis_name=DEVICE_AXIS, in_axes=axes, devices=self.devices,
            donate_argnums=donate_argnums)
      blocks = [a if ax is None else jax.device_put(jax.tree.map(
          lambda x: jnp.reshape(x, (d, v) + jnp.shape(x)[1:]), a), blocks_sharding)
                for a, ax in zip(args, axes)]
      out = cache[axes](*blocks)
      return jax.tree.map(lambda x: jnp.reshape(x, (d * v,) + x.shape[2:]), out)

    return run

  def _map_shard_map(self, fn, in_axes, donate_argnums):
    one_per_device = self.workers_per_device == 1

    def per_device(axes, *args):
      if one_per_device:
        args = [a if ax is None else jax.tree.map(lambda x: x[0], a)
                for a, ax in zip(args, axes)]
        return jax.tree.map(lambda x: jnp.expand_dims(x, 0), fn(*args))
      return jax.vmap(fn, in_axes=axes, axis_name=WORKER_AXIS)(*args)

    def run(*args):
      axes = _per_arg_axes(in_axes, len(args))
      specs = tuple(P() if ax is None else self._stacked_spec for ax in axes)
      mapped = jax.shard_map(
          lambda *a: per_device(axes, *a), mesh=self.mesh, in_specs=specs,
          out_specs=self._stacked_spec,
          # A pmean over a vmap axis inside shard_map needs check_vma=False
          # (docs/algorithms.md, "Data-parallel workers"), and post-local
          # SGD's branches differ in variance.
          check_vma=False)
      return mapped(*args)

    return jax.jit(run, donate_argnums=donate_argnums)


def _same_on_every_device(x: jax.Array) -> bool:
  first = np.asarray(x.addressable_shards[0].data)
  return all(np.asarray(shard.data).tobytes() == first.tobytes()
             for shard in x.addressable_shards[1:])


def check_per_worker(tree: Any, num_workers: int, *, name: str = "tree") -> Any:
  """Checks that a tree holds every worker's values, e.g. before a checkpoint.

  With an extrapolated optimizer the parameters and the optimizer state differ
  per worker, so a checkpoint that resumes exactly must hold all K workers'
  values, stacked along a leading axis (the layout of `Workers`, of a `pmap`
  with `out_axes=0`, of `shard_map` with `out_specs=P(axis)`, of a `vmap`-ed
  step). Saving those stacked arrays as they are, e.g. with
  ``orbax.checkpoint.StandardCheckpointer``, and restoring them with the same
  shapes and shardings continues bit for bit. Two mistakes lose workers
  silently; this check catches them:

  * a leaf without the leading worker axis, as after
    ``flax.jax_utils.unreplicate`` or ``x[0]``: only worker 0 was kept;
  * a leaf labelled replicated (fully replicated sharding) whose device buffers
    differ, as returned by ``jax.pmap(..., out_axes=None)`` or ``shard_map``
    with ``out_specs=P()`` and ``check_vma=False``: a host read sees device 0,
    a checkpoint stores a patchwork of workers.

  The second check copies each replicated leaf's device buffers to the host.

  Args:
    tree: the per-worker trees to save, e.g. ``(params, opt_state)``.
    num_workers: K, the number of workers.
    name: how errors call `tree`.

  Returns:
    `tree`, unchanged.

  Raises:
    ValueError: naming the first offending leaf and the fix.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, Algorithm 1 (the
    local models :math:`x^k_{t+1/2}` of the K workers).

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> workers = extrap_optax.Workers(num_workers=4, backend="vmap")
    >>> tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.025,
    ...                              axis_name=workers.axis_name)
    >>> params = workers.replicate({"w": jnp.ones(3)})
    >>> state = (params, workers.map(tx.init)(params))
    >>> extrap_optax.check_per_worker(state, 4) is state
    True
    >>> extrap_optax.check_per_worker(workers.unreplicate(state), 4)
    Traceback (most recent call last):
    ...
    ValueError: tree[0]['w'] has shape (3,), without a leading worker axis ...
  """
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"`num_workers` must be a positive int, got {num_workers!r}.")
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    where = f"{name}{jax.tree_util.keystr(path)}"
    shape = np.shape(leaf)
    if (isinstance(leaf, jax.Array) and leaf.sharding.is_fully_replicated
        and len(leaf.addressable_shards) > 1 and not _same_on_every_device(leaf)):
      raise ValueError(
          f"{where} (shape {shape}) is labelled replicated but its devices hold "
          "different values: it came out of `jax.pmap(..., out_axes=None)` or "
          "`shard_map(..., out_specs=P())` while it differs per worker. Return "
          "the parameters and the optimizer state per worker (`out_axes=0`, "
          "`out_specs=P(axis)`) and pass them back in the same way.")
    if not shape or shape[0] != num_workers:
      raise ValueError(
          f"{where} has shape {shape}, without a leading worker axis of size "
          f"K={num_workers}: it holds one worker's copy (e.g. after "
          "`flax.jax_utils.unreplicate` or `x[0]`), and a run resumed from it "
          "would restart every worker from that copy. Keep the per-worker "
          "stacks: save the parameters and optimizer state as the training "
          "step returns them.")
  return tree


def _explicit_mesh_axes() -> tuple[str, ...]:
  """The explicit axes of the mesh set with `jax.set_mesh` (none without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  return () if mesh.empty else tuple(mesh.explicit_axes)


def over_stacked_workers(
    tx: optax.GradientTransformation,
    axis_name: str,
) -> optax.GradientTransformationExtraArgs:
  r"""A transformation of one worker, applied to trees stacked over K workers.

  The global view of data parallelism, as in plain `jax.jit` code on a mesh
  (`jax.make_mesh` with its default explicit axes, `jax.set_mesh`): every
  per-worker value (parameters, gradients, optimizer state) carries a leading
  worker axis of size K, sharded over the mesh, and the training step names
  no axis. `tx` was built for one worker with ``axis_name=axis_name``; this
  wrapper runs its `init` and `update` under ``jax.vmap(...,
  axis_name=axis_name)`` over the leading axis, so the mean over workers
  inside `tx` (:math:`\bar g = \frac1K \sum_k g^k`) is a reduction over that
  axis, which XLA lowers to an all-reduce across the devices holding the
  workers.

  Under a mesh with explicit axes, the worker axis of every state leaf is
  sharded like the parameters', and `update` runs in `jax.sharding.auto_axes`
  and returns the updates sharded like the gradients and the state sharded
  like the state it was given: JAX 0.10 cannot lower the batched mean over a
  `vmap` axis on explicitly sharded arrays itself (``jax.lax.psum(x, 0)`` on
  an array sharded over its axis 0 fails with "Sharding spec ... does not
  evenly divide"; see :ref:`global-view`).

  Extra keyword arguments of `update` are passed to every worker unchanged.

  Args:
    tx: the per-worker transformation, built with ``axis_name=axis_name``.
    axis_name: the name `tx` averages over; it only names the `vmap` axis
      inside this wrapper.

  Returns:
    An `optax.GradientTransformationExtraArgs` on stacked (K, ...) trees.

  Raises:
    ValueError: for an `axis_name` that is not a string.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, Algorithm 1 (the K
    local models and the averaged gradient).

  Examples:
    Two workers with gradients 1 and 3 take a step with their mean, 2:

    >>> import jax.numpy as jnp
    >>> import extrap_optax, optax
    >>> tx = extrap_optax.over_stacked_workers(
    ...     extrap_optax.minibatch_sgd(0.5, momentum=0.0, axis_name="workers"),
    ...     axis_name="workers")
    >>> params = jnp.zeros((2, 1))                   # (K, ...) per worker
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([[1.0], [3.0]]), state, params)
    >>> print(updates.ravel().tolist())
    [-1.0, -1.0]
  """
  if not isinstance(axis_name, str):
    raise ValueError(
        f"`axis_name` must be the string `tx` was built with, got {axis_name!r}.")
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    state = jax.vmap(tx.init, axis_name=axis_name)(params)
    leaves = jax.tree.leaves(params)
    if not _explicit_mesh_axes() or not leaves:
      return state
    # Leaves created inside `init` (e.g. a step count) come out replicated:
    # shard their worker axis like the parameters'.
    worker_spec = jax.typeof(leaves[0]).sharding.spec
    worker_axes = worker_spec[0] if worker_spec else None

    def shard_worker_axis(x):
      spec = jax.typeof(x).sharding.spec
      if worker_axes is None or (spec and spec[0] is not None):
        return x
      return jax.sharding.reshard(x, P(worker_axes, *spec[1:]))

    return jax.tree.map(shard_worker_axis, state)

  def update_fn(updates, state, params=None, **extra_args):
    update = jax.vmap(lambda g, s, p: tx.update(g, s, p, **extra_args),
                      axis_name=axis_name)
    if _explicit_mesh_axes():
      def shardings(tree):
        return jax.tree.map(lambda x: jax.typeof(x).sharding, tree)
      update = jax.sharding.auto_axes(
          update, out_sharding=(shardings(updates), shardings(state)))
    return update(updates, state, params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
