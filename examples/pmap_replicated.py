r"""(a) Classic `jax.pmap` data parallelism with a replicated Flax `TrainState`.

The style of the Flax ImageNet example: `flax.jax_utils.replicate(state)`, one
`jax.pmap(train_step, axis_name="batch")`, `lax.pmean` of the gradients, an orbax
checkpoint. `--optimizer` switches between `optax.sgd` (Nesterov) and
`extrap_optax.extrap_sgd`; the lines EXTRAP-SGD needs are marked `EXTRAP-SGD:`.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python examples/pmap_replicated.py --optimizer extrap_sgd

One worker per device; the synthetic data of step t is a function of t, so a run
resumed from `--checkpoint-dir` sees the same batches as one that never stopped.
"""

from __future__ import annotations

import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import jax_utils
from flax.training import train_state

import extrap_optax

FEATURES, CLASSES, LOCAL_BATCH = 16, 4, 32


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(CLASSES)(jnp.tanh(nn.Dense(32)(x)))


def batch_of(seed: int, size: int) -> dict[str, np.ndarray]:
  """`size` examples labelled by a fixed linear teacher; a function of `seed`."""
  teacher = np.random.default_rng(0).normal(size=(FEATURES, CLASSES))
  x = np.random.default_rng([1, seed]).normal(size=(size, FEATURES))
  return {"x": x.astype(np.float32), "y": np.argmax(x @ teacher, -1).astype(np.int32)}


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_optimizer(args, num_workers):
  if args.optimizer == "optax":
    return optax.sgd(args.learning_rate, momentum=0.9, nesterov=True)
  # EXTRAP-SGD: the optimizer averages the gradients over the pmap axis itself.
  rate = args.learning_rate / num_workers if args.extrapolation_rate is None else (
      args.extrapolation_rate)
  return extrap_optax.extrap_sgd(args.learning_rate, extrapolation_rate=rate,
                                 momentum=0.9, axis_name="batch")


def train_step(state, batch, *, average_gradients):
  def loss_fn(params):
    return cross_entropy(state.apply_fn({"params": params}, batch["x"]), batch["y"])

  grads = jax.grad(loss_fn)(state.params)
  if average_gradients:  # EXTRAP-SGD: no pmean here, the optimizer does it
    grads = jax.lax.pmean(grads, axis_name="batch")
  return state.apply_gradients(grads=grads)


def eval_step(state, batch):
  # EXTRAP-SGD: evaluate the shared point y, not the worker's extrapolated
  # params (for an optax optimizer `evaluation_params` returns the params).
  params = extrap_optax.evaluation_params(state.params, state.opt_state)
  loss = cross_entropy(state.apply_fn({"params": params}, batch["x"]), batch["y"])
  return jax.lax.pmean(loss, axis_name="batch")


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

  num_workers = jax.local_device_count()
  tx = make_optimizer(args, num_workers)
  model = MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, FEATURES)))["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  state = jax_utils.replicate(state)

  checkpoints = None
  if args.checkpoint_dir:
    checkpoints = ocp.CheckpointManager(os.path.abspath(args.checkpoint_dir))
    if checkpoints.latest_step() is not None:
      # Restored with the shapes and shardings of the live, replicated state.
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      state = checkpoints.restore(checkpoints.latest_step(),
                                  args=ocp.args.StandardRestore(abstract))

  p_train_step = jax.pmap(
      lambda s, b: train_step(s, b, average_gradients=args.optimizer == "optax"),
      axis_name="batch", donate_argnums=0)
  p_eval_step = jax.pmap(eval_step, axis_name="batch")

  def shard(batch):
    return jax.tree.map(lambda x: x.reshape(num_workers, -1, *x.shape[1:]), batch)

  eval_batch = shard(batch_of(0, 512))
  losses = []
  for step in range(int(state.step[0]), args.steps):
    state = p_train_step(state, shard(batch_of(step + 1, num_workers * LOCAL_BATCH)))
    losses.append(float(p_eval_step(state, eval_batch)[0]))
    print(f"step {step + 1}: loss of the shared point {losses[-1]:.4f}")

  if checkpoints is not None:
    # EXTRAP-SGD: every worker holds its own params and momentum buffers; save
    # the replicated state as it is, not `jax_utils.unreplicate(state)`
    # (worker 0 only). `check_per_worker` would catch that mistake.
    extrap_optax.check_per_worker(state, num_workers, name="state")
    checkpoints.save(args.steps, args=ocp.args.StandardSave(state))
    checkpoints.wait_until_finished()
    checkpoints.close()
  return {"losses": losses, "params": state.params,
          "opt_state": state.opt_state,
          "evaluation_params": jax.device_get(jax_utils.unreplicate(
              extrap_optax.evaluation_params(state.params, state.opt_state)))}


if __name__ == "__main__":
  main()
