r"""(c) `jax.shard_map` over your own `Mesh`, with your own axis name.

Plain JAX and optax, as in JAX's shard_map data-parallel example: a mesh with
one axis `"batch"` over all devices, a step written for one device's slice of
the batch, the loss averaged with `lax.pmean(..., "batch")` so that its gradient
with respect to the replicated (`P()`) parameters is the mean gradient, and
`out_specs=P()` for the parameters and optimizer state, which `shard_map`
checks are the same on every device. With EXTRAP-SGD they differ per worker
(one worker per device): they are stacked along a leading worker axis and
sharded `P("batch")`, each device steps its own `(1, ...)` block on the
gradient of its own loss (a `pmean` in the loss would divide every worker's
gradient by K), and the optimizer, built with `axis_name="batch"`, averages the
gradients itself. `--optimizer` switches between `optax.sgd` (Nesterov),
`extrap_optax.extrap_sgd` and DiLoCo + EXTRAP (`extrap_optax.diloco` with an
extrapolation rate: local steps, an outer step every `--sync-period`); the
lines EXTRAP-SGD needs are marked `EXTRAP-SGD:`, and DiLoCo needs no other.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python examples/shard_map_mesh.py --optimizer extrap_sgd

With `shard_map`'s default `check_vma=True`, JAX's types say which values
differ between devices: returning per-worker parameters with `out_specs=P()`
is an error when the step is traced, and so is giving the extrapolated
optimizer gradients that were already averaged.
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
  if args.optimizer == "diloco_extrap":
    # DiLoCo + EXTRAP: local AdamW steps from extrapolated points, an outer
    # Nesterov step (0.7, 0.9) every --sync-period steps. The only line that
    # changes: the rest of the script is the same.
    return extrap_optax.diloco(args.learning_rate, sync_period=args.sync_period,
                               extrapolation_rate=rate, axis_name="batch")
  return extrap_optax.extrap_sgd(args.learning_rate, extrapolation_rate=rate,
                                 momentum=0.9, axis_name="batch")


def main(argv=None) -> dict:
  """Trains; returns the shared point's loss after each step and the final state."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--optimizer", choices=("optax", "extrap_sgd", "diloco_extrap"),
                      default="extrap_sgd")
  parser.add_argument("--learning-rate", type=float, default=0.2,
                      help="γ (for diloco_extrap, the inner AdamW rate, e.g. 0.01)")
  parser.add_argument("--sync-period", type=int, default=4,
                      help="H, local steps per DiLoCo round")
  parser.add_argument("--extrapolation-rate", type=float, default=None,
                      help="γ̂ (default γ/K, the paper's choice)")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--checkpoint-dir", default=None,
                      help="resume from its latest checkpoint; save at the end")
  args = parser.parse_args(argv)

  num_workers = jax.device_count()
  mesh = jax.make_mesh((num_workers,), ("batch",))
  tx = make_optimizer(args, num_workers)
  per_worker = args.optimizer != "optax"
  # EXTRAP-SGD: parameters and optimizer state are stacked per worker and
  # sharded over "batch"; with optax they are replicated.
  state_spec = P("batch") if per_worker else P()

  params = init_params(jax.random.key(0))
  if per_worker:
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_workers,) + x.shape), params)
    opt_state = jax.vmap(tx.init)(params)
  else:
    opt_state = tx.init(params)
  params, opt_state = jax.device_put((params, opt_state), NamedSharding(mesh, state_spec))

  def train_step(params, opt_state, batch):
    if per_worker:  # EXTRAP-SGD: this device's (1, ...) block is its worker
      params, opt_state = jax.tree.map(lambda x: x[0], (params, opt_state))
    # EXTRAP-SGD: the gradient of the worker's own loss; the optimizer averages.
    local_loss = loss_fn if per_worker else (
        lambda p, b: jax.lax.pmean(loss_fn(p, b), "batch"))
    loss, grads = jax.value_and_grad(local_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if per_worker:
      params, opt_state = jax.tree.map(lambda x: x[None], (params, opt_state))
    return params, opt_state, jax.lax.pmean(loss, "batch")

  step = jax.jit(jax.shard_map(
      train_step, mesh=mesh, in_specs=(state_spec, state_spec, P("batch")),
      out_specs=(state_spec, state_spec, P())), donate_argnums=(0, 1))

  def eval_step(params, opt_state, batch):
    # EXTRAP-SGD: evaluate the shared point y, the same in every worker's
    # state (for optax, `evaluation_params` returns the params); for DiLoCo
    # the workers' average, one all-reduce over "batch".
    y = extrap_optax.evaluation_params(params, opt_state)
    if per_worker:
      y = jax.tree.map(lambda x: x[0], y)
    return jax.lax.pmean(loss_fn(y, batch), "batch")

  evaluate = jax.jit(jax.shard_map(
      eval_step, mesh=mesh, in_specs=(state_spec, state_spec, P("batch")),
      out_specs=P()))

  checkpoints = None
  first_step = 0
  if args.checkpoint_dir:
    checkpoints = ocp.CheckpointManager(os.path.abspath(args.checkpoint_dir))
    if checkpoints.latest_step() is not None:
      first_step = checkpoints.latest_step()
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, (params, opt_state))
      params, opt_state = checkpoints.restore(
          first_step, args=ocp.args.StandardRestore(abstract))

  data_sharding = NamedSharding(mesh, P("batch"))
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
  if per_worker:  # stacked rows: one shared point, or the workers' models (DiLoCo)
    local = extrap_optax.averages_models(opt_state)
    y = jax.tree.map(lambda x: x.mean(axis=0) if local else x[0], y)
  return {"losses": losses, "params": params, "opt_state": opt_state,
          "evaluation_params": y}


if __name__ == "__main__":
  main()
