r"""(b) `jax.pmap` with a shared state: `in_axes=None` in, `out_axes=None` out.

The style of the current Flax ImageNet example: the `TrainState` is not
replicated by hand; `jax.pmap(train_step, in_axes=(None, 0), out_axes=None)`
broadcasts it to the devices and takes it back as one copy, which is right
while every device computes the same state. With EXTRAP-SGD the parameters and
the optimizer state differ per worker: they must be mapped over the device axis
(`0` in `in_axes` and `out_axes`), or the returned "replicated" state silently
holds a different extrapolation point on each device. `--optimizer` switches
between `optax.sgd` (Nesterov) and `extrap_optax.extrap_sgd`; the lines
EXTRAP-SGD needs are marked `EXTRAP-SGD:`.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python examples/pmap_out_axes_none.py --optimizer extrap_sgd
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
  # EXTRAP-SGD: evaluate the shared point y (`evaluation_params` returns the
  # params of an optax optimizer unchanged).
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
  state_axes = None  # the whole state is the same on every device
  if args.optimizer != "optax":
    # EXTRAP-SGD: parameters and optimizer state are per worker, stacked along
    # the device axis; the step count stays shared.
    state = state.replace(params=jax_utils.replicate(state.params),
                          opt_state=jax_utils.replicate(state.opt_state))
    state_axes = state.replace(step=None, params=0, opt_state=0)

  checkpoints = None
  if args.checkpoint_dir:
    checkpoints = ocp.CheckpointManager(os.path.abspath(args.checkpoint_dir))
    if checkpoints.latest_step() is not None:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      state = checkpoints.restore(checkpoints.latest_step(),
                                  args=ocp.args.StandardRestore(abstract))

  p_train_step = jax.pmap(
      lambda s, b: train_step(s, b, average_gradients=args.optimizer == "optax"),
      axis_name="batch", in_axes=(state_axes, 0), out_axes=state_axes)
  p_eval_step = jax.pmap(eval_step, axis_name="batch", in_axes=(state_axes, 0),
                         out_axes=None)

  def shard(batch):
    return jax.tree.map(lambda x: x.reshape(num_workers, -1, *x.shape[1:]), batch)

  eval_batch = shard(batch_of(0, 512))
  losses = []
  for step in range(int(state.step), args.steps):
    state = p_train_step(state, shard(batch_of(step + 1, num_workers * LOCAL_BATCH)))
    losses.append(float(p_eval_step(state, eval_batch)))
    print(f"step {step + 1}: loss of the shared point {losses[-1]:.4f}")

  if checkpoints is not None:
    if args.optimizer != "optax":
      # EXTRAP-SGD: the per-worker part must hold every worker; with
      # `out_axes=None` it would be a patchwork, which this check rejects.
      extrap_optax.check_per_worker((state.params, state.opt_state), num_workers,
                                    name="(state.params, state.opt_state)")
    checkpoints.save(args.steps, args=ocp.args.StandardSave(state))
    checkpoints.wait_until_finished()
    checkpoints.close()
  y = extrap_optax.evaluation_params(state.params, state.opt_state)
  return {"losses": losses, "params": state.params,
          "opt_state": state.opt_state,
          "evaluation_params": jax.device_get(
              y if args.optimizer == "optax" else jax_utils.unreplicate(y))}


if __name__ == "__main__":
  main()
