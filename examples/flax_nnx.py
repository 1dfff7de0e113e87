r"""(e) Flax NNX with `nnx.Optimizer`, data parallel over a device mesh.

The NNX way: a stateful `nnx.Module`, `nnx.Optimizer(model, tx, wrt=nnx.Param)`,
an `@nnx.jit` step calling `optimizer.update(model, grads)`, the batch sharded
over a mesh axis, orbax for checkpoints. With optax the model is replicated and
XLA averages the gradients over the sharded batch. EXTRAP-SGD needs each
worker's own gradient at its own parameters: the model and the optimizer are
created once per worker with `nnx.vmap` (stacked along a leading worker axis,
sharded over the mesh axis), and the step is `nnx.vmap`-ed over the workers
with `axis_name` (the axis the optimizer averages over) and `spmd_axis_name`
(which keeps worker k on the devices of its slice of the batch).
`--optimizer` switches between `optax.sgd` (Nesterov) and
`extrap_optax.extrap_sgd`; the lines EXTRAP-SGD needs are marked `EXTRAP-SGD:`.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python examples/flax_nnx.py --optimizer extrap_sgd

The mesh axes are `AxisType.Auto`: under `jax.make_mesh`'s default explicit
axes, JAX 0.10 cannot batch a collective over a `vmap` axis (it fails with
"Sharding spec ... does not evenly divide"); with explicit axes use the
`shard_map` style (`examples/shard_map_mesh.py`).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax

FEATURES, CLASSES, LOCAL_BATCH = 16, 4, 32


class MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(FEATURES, 32, rngs=rngs)
    self.out = nnx.Linear(32, CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def batch_of(seed: int, size: int) -> dict[str, np.ndarray]:
  """`size` examples labelled by a fixed linear teacher; a function of `seed`."""
  teacher = np.random.default_rng(0).normal(size=(FEATURES, CLASSES))
  x = np.random.default_rng([1, seed]).normal(size=(size, FEATURES))
  return {"x": x.astype(np.float32), "y": np.argmax(x @ teacher, -1).astype(np.int32)}


def loss_fn(model, batch):
  return optax.softmax_cross_entropy_with_integer_labels(
      model(batch["x"]), batch["y"]).mean()


def make_optimizer(args, num_workers):
  if args.optimizer == "optax":
    return optax.sgd(args.learning_rate, momentum=0.9, nesterov=True)
  rate = args.learning_rate / num_workers if args.extrapolation_rate is None else (
      args.extrapolation_rate)
  return extrap_optax.extrap_sgd(args.learning_rate, extrapolation_rate=rate,
                                 momentum=0.9, axis_name="batch")


def train_step(model, optimizer, batch):
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
  optimizer.update(model, grads)
  return loss


def shared_point(model, optimizer):
  """A model holding the shared point y (for optax: the model itself)."""
  # EXTRAP-SGD: evaluate y, not the worker's extrapolated parameters.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  y = extrap_optax.evaluation_params(nnx.as_pure(params),
                                     nnx.as_pure(optimizer.opt_state))
  return nnx.merge(graphdef, y, rest)


def main(argv=None) -> dict:
  """Trains; returns the shared point's loss after each step and the final state."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--optimizer", choices=("optax", "extrap_sgd"), default="extrap_sgd")
  parser.add_argument("--learning-rate", type=float, default=0.2)
  parser.add_argument("--extrapolation-rate", type=float, default=None,
                      help="γ̂ (default γ/K, the paper's choice)")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--checkpoint-dir", default=None,
                      help="resume from its latest checkpoint; save at the end")
  args = parser.parse_args(argv)

  num_workers = jax.device_count()
  mesh = jax.make_mesh((num_workers,), ("batch",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  data_sharding = NamedSharding(mesh, P("batch"))
  tx = make_optimizer(args, num_workers)
  per_worker = args.optimizer != "optax"

  def create():
    model = MLP(nnx.Rngs(0))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  if per_worker:
    # EXTRAP-SGD: K copies of the model and optimizer (the same initial
    # values), stacked along the worker axis and sharded over the mesh.
    model, optimizer = nnx.vmap(create, axis_size=num_workers)()
    state_sharding = data_sharding
    step = nnx.vmap(train_step, axis_name="batch", spmd_axis_name="batch")
  else:
    model, optimizer = create()
    state_sharding = NamedSharding(mesh, P())
    step = train_step
  nnx.update((model, optimizer),
             jax.device_put(nnx.state((model, optimizer)), state_sharding))

  @nnx.jit
  def train(model, optimizer, batch):
    if per_worker:  # EXTRAP-SGD: worker k's local batch is row k
      batch = jax.tree.map(lambda x: x.reshape(num_workers, -1, *x.shape[1:]), batch)
    return jnp.mean(step(model, optimizer, batch))

  @nnx.jit
  def evaluate(model, optimizer, batch):
    if per_worker:
      return jnp.mean(nnx.vmap(lambda m, o: loss_fn(shared_point(m, o), batch),
                               in_axes=(0, 0))(model, optimizer))
    return loss_fn(shared_point(model, optimizer), batch)

  checkpoints = None
  first_step = 0
  if args.checkpoint_dir:
    checkpoints = ocp.CheckpointManager(os.path.abspath(args.checkpoint_dir))
    if checkpoints.latest_step() is not None:
      first_step = checkpoints.latest_step()
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                              nnx.state((model, optimizer)))
      nnx.update((model, optimizer), checkpoints.restore(
          first_step, args=ocp.args.StandardRestore(abstract)))

  eval_batch = jax.device_put(batch_of(0, 512), data_sharding)
  losses = []
  for t in range(first_step, args.steps):
    batch = jax.device_put(batch_of(t + 1, num_workers * LOCAL_BATCH), data_sharding)
    train(model, optimizer, batch)
    losses.append(float(evaluate(model, optimizer, eval_batch)))
    print(f"step {t + 1}: loss of the shared point {losses[-1]:.4f}")

  state = nnx.state((model, optimizer))
  if checkpoints is not None:
    if per_worker:  # EXTRAP-SGD: the stacked state holds every worker
      extrap_optax.check_per_worker(state, num_workers, name="nnx.state(...)")
    checkpoints.save(args.steps, args=ocp.args.StandardSave(state))
    checkpoints.wait_until_finished()
    checkpoints.close()
  y = nnx.state(shared_point(model, optimizer), nnx.Param)
  return {"losses": losses, "params": nnx.as_pure(nnx.state(model, nnx.Param)),
          "opt_state": nnx.as_pure(optimizer.opt_state),
          "evaluation_params": jax.device_get(nnx.as_pure(
              jax.tree.map(lambda x: x[0], y) if per_worker else y))}


if __name__ == "__main__":
  main()
