r"""(d) Plain `jax.jit` with `NamedSharding` inputs: no collective in the step.

The style of most current JAX training code (e.g. MLCommons AlgoPerf): the
batch is sharded over a mesh axis, the parameters are replicated, the step is
written for the global batch and XLA inserts the all-reduce of the gradient.
EXTRAP-SGD needs each worker's gradient at its own parameters, so the step is
`jax.vmap`-ed over K workers: parameters and optimizer state are stacked along
a leading worker axis and sharded over the mesh axis like the batch,
`axis_name` names the vmap axis (the one the optimizer averages over, an
all-reduce after partitioning) and `spmd_axis_name` keeps worker k on the
devices of its slice of the batch. `--optimizer` switches between `optax.sgd`
(Nesterov) and `extrap_optax.extrap_sgd`; the lines EXTRAP-SGD needs are marked
`EXTRAP-SGD:`.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python examples/jit_sharding.py --optimizer extrap_sgd

The mesh axes are `AxisType.Auto`: under `jax.make_mesh`'s default explicit
axes, JAX 0.10 cannot batch a collective over a `vmap` axis (it fails with
"Sharding spec ... does not evenly divide"). New code on explicit axes: the
global view of `examples/global_view.py`.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax

FEATURES, CLASSES, LOCAL_BATCH, HIDDEN = 16, 4, 32, 32


def init_params(key):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
          "b1": jnp.zeros(HIDDEN),
          "w2": jax.random.normal(k2, (HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
          "b2": jnp.zeros(CLASSES)}


def loss_fn(params, batch):
  hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  logits = hidden @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def batch_of(seed: int, size: int) -> dict[str, np.ndarray]:
  """`size` examples labelled by a fixed linear teacher; a function of `seed`."""
  teacher = np.random.default_rng(0).normal(size=(FEATURES, CLASSES))
  x = np.random.default_rng([1, seed]).normal(size=(size, FEATURES))
  return {"x": x.astype(np.float32), "y": np.argmax(x @ teacher, -1).astype(np.int32)}


def make_optimizer(args, num_workers):
  if args.optimizer == "optax":
    return optax.sgd(args.learning_rate, momentum=0.9, nesterov=True)
  rate = args.learning_rate / num_workers if args.extrapolation_rate is None else (
      args.extrapolation_rate)
  # EXTRAP-SGD: axis_name is the name of the vmap axis over the workers.
  return extrap_optax.extrap_sgd(args.learning_rate, extrapolation_rate=rate,
                                 momentum=0.9, axis_name="batch")


def train_step(tx, params, opt_state, batch):
  loss, grads = jax.value_and_grad(loss_fn)(params, batch)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


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

  params = init_params(jax.random.key(0))
  if per_worker:
    # EXTRAP-SGD: K stacked copies, worker k's on the devices of batch row k.
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_workers,) + x.shape), params)
    opt_state = jax.vmap(tx.init)(params)
    state_sharding = data_sharding
  else:
    opt_state = tx.init(params)
    state_sharding = NamedSharding(mesh, P())
  params, opt_state = jax.device_put((params, opt_state), state_sharding)

  @jax.jit
  def step(params, opt_state, batch):
    if not per_worker:
      return train_step(tx, params, opt_state, batch)
    # EXTRAP-SGD: one step per worker, on its own (B, ...) slice of the batch.
    batch = jax.tree.map(lambda x: x.reshape(num_workers, -1, *x.shape[1:]), batch)
    params, opt_state, loss = jax.vmap(
        lambda p, s, b: train_step(tx, p, s, b),
        axis_name="batch", spmd_axis_name="batch")(params, opt_state, batch)
    return params, opt_state, jnp.mean(loss)

  @jax.jit
  def evaluate(params, opt_state, batch):
    # EXTRAP-SGD: evaluate the shared point y (the same in every worker's
    # state); for optax `evaluation_params` returns the params.
    y = extrap_optax.evaluation_params(params, opt_state)
    return loss_fn(jax.tree.map(lambda x: x[0], y) if per_worker else y, batch)

  checkpoints = None
  first_step = 0
  if args.checkpoint_dir:
    checkpoints = ocp.CheckpointManager(os.path.abspath(args.checkpoint_dir))
    if checkpoints.latest_step() is not None:
      first_step = checkpoints.latest_step()
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, (params, opt_state))
      params, opt_state = checkpoints.restore(
          first_step, args=ocp.args.StandardRestore(abstract))

  eval_batch = jax.device_put(batch_of(0, 512), data_sharding)
  losses = []
  for t in range(first_step, args.steps):
    batch = jax.device_put(batch_of(t + 1, num_workers * LOCAL_BATCH), data_sharding)
    params, opt_state, _ = step(params, opt_state, batch)
    losses.append(float(evaluate(params, opt_state, eval_batch)))
    print(f"step {t + 1}: loss of the shared point {losses[-1]:.4f}")

  if checkpoints is not None:
    if per_worker:  # EXTRAP-SGD: save the stacked state of every worker
      extrap_optax.check_per_worker((params, opt_state), num_workers)
    checkpoints.save(args.steps, args=ocp.args.StandardSave((params, opt_state)))
    checkpoints.wait_until_finished()
    checkpoints.close()
  y = jax.device_get(extrap_optax.evaluation_params(params, opt_state))
  return {"losses": losses, "params": params, "opt_state": opt_state,
          "evaluation_params": jax.tree.map(lambda x: x[0], y) if per_worker else y}


if __name__ == "__main__":
  main()
