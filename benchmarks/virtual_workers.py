"""Simulating K workers x B on D devices, against one worker at batch K·B.

Every candidate trains ResNet-20 with EXTRAP-SGD (weight decay 1e-4), one step
per call, params, BN statistics and optimizer state donated; throughput
(images/s) is compared with one worker at batch K·B on one device, timed in the
same rounds (goal: ≥ 0.8). Candidates:

- `Workers` backends: 'shard_map' with one worker per device (D = K), with V > 1
  vmapped workers per device (D = 4, 2), 'pmap' (D = K), 'vmap' (D = 1);
- "sequential": not a `Workers` backend: per device, the V gradients are
  computed one after the other (an unrolled loop of plain batch-B steps),
  then the optimizer update runs vmapped over the V workers (its `pmean` over
  the vmap and shard_map axes). Same mathematics; its parameters after one
  step are compared with those of one worker per device.

On CPU the script asks XLA for 8 fake devices (it must run in its own process).
On a GPU there is one device, so the D > 1 cases are skipped.
The projected wall time of the paper's Table-1 run (300 epochs of CIFAR-10,
K = 32, B = 256, 1,800 steps) assumes the step time grows linearly with the
global batch from the fastest measured way: steps · (8,192 / images/s).

Run: `python -m benchmarks.virtual_workers [--workers K] [--local-batch B]`.
"""

from benchmarks import common

common.use_fake_cpu_devices(8)

# pylint: disable=wrong-import-position
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import extrap_optax
from benchmarks import trees

NAME = "virtual_workers"
LR = 0.1
WEIGHT_DECAY = 1e-4


def _extrap_sgd(num_workers: int, axis_name):
  return extrap_optax.extrap_sgd(
      LR, extrapolation_rate=LR / num_workers, weight_decay=WEIGHT_DECAY,
      axis_name=axis_name)


def _stepper(step, state, batch):
  """A no-argument call doing one donated step; `state` is updated in place."""

  def call():
    state["p"], state["b"], state["o"], loss = step(
        state["p"], state["b"], state["o"], batch)
    jax.block_until_ready(loss)

  return call


def single_worker(model, variables, batch):
  """One worker at the global batch on one device."""
  tx = _extrap_sgd(1, None)
  step = jax.jit(trees.resnet_train_step(model, tx), donate_argnums=(0, 1, 2))
  state = {"p": jax.tree.map(jnp.copy, variables["params"]),
           "b": jax.tree.map(jnp.copy, variables["batch_stats"])}
  state["o"] = tx.init(state["p"])
  return _stepper(step, state, jax.device_put(batch)), state


def workers_way(model, variables, batch, num_workers, backend, devices):
  """K workers through `extrap_optax.Workers`."""
  workers = extrap_optax.Workers(num_workers, backend=backend, devices=devices)
  tx = _extrap_sgd(num_workers, workers.axis_name)
  step = workers.map(trees.resnet_train_step(model, tx), donate_argnums=(0, 1, 2))
  state = {"p": workers.replicate(variables["params"]),
           "b": workers.replicate(variables["batch_stats"])}
  state["o"] = workers.map(tx.init)(state["p"])
  return _stepper(step, state, workers.split(batch)), state


def sequential_way(model, variables, batch, num_workers, devices):
  """Per device: V gradients one after another, then a vmapped update."""
  axis_name = ("devices", "workers")
  tx = _extrap_sgd(num_workers, axis_name)
  grad_fn = jax.value_and_grad(trees.resnet_loss_fn(model), has_aux=True)
  mesh = Mesh(np.array(devices), ("devices",))
  sharding = NamedSharding(mesh, P("devices"))

  def per_device(params, batch_stats, opt_state, local_batches):
    def one_worker(args):
      (loss, stats), grads = grad_fn(*args)
      return grads, stats, loss

    # A Python loop (unrolled): under `lax.map`, a while loop, XLA:CPU ran the
    # convolutions about 15 times slower.
    outs = [one_worker(jax.tree.map(lambda x, v=v: x[v], (params, batch_stats,
                                                          local_batches)))
            for v in range(jax.tree.leaves(local_batches)[0].shape[0])]
    grads, batch_stats, loss = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    updates, opt_state = jax.vmap(tx.update, axis_name="workers")(
        grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  step = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=P("devices"), out_specs=P("devices"),
      check_vma=False), donate_argnums=(0, 1, 2))

  def stack(tree):
    return jax.device_put(jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (num_workers,) + np.shape(x)), tree),
        sharding)

  state = {"p": stack(variables["params"]), "b": stack(variables["batch_stats"])}
  state["o"] = jax.jit(jax.vmap(tx.init))(state["p"])
  split = jax.device_put(jax.tree.map(
      lambda x: x.reshape((num_workers, -1) + x.shape[1:]), batch), sharding)
  return _stepper(step, state, split), state


def main(argv=None) -> None:
  """Runs the benchmark and writes the result files."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workers", type=int, default=8, help="K")
  parser.add_argument("--local-batch", type=int, default=16, help="B")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--skip-vmap", action="store_true",
                      help="leave out the slow 'vmap' backend (all K on one device)")
  common.add_out_dir_argument(parser)
  args = parser.parse_args(argv)
  devices = jax.devices()
  print(f"device: {devices[0]} ({len(devices)} devices)")
  k, b = args.workers, args.local_batch
  model, variables = trees.resnet20()
  batch = trees.cifar_batch(k * b)

  ways = {f"one worker, batch {k * b}": lambda: single_worker(model, variables, batch)}
  for d in sorted({d for d in (k, 4, 2) if d <= len(devices) and k % d == 0 and d > 1},
                  reverse=True):
    ways[f"Workers shard_map, D={d} x V={k // d}"] = (
        lambda d=d: workers_way(model, variables, batch, k, "shard_map", devices[:d]))
  if k <= len(devices) and len(devices) > 1:
    ways[f"Workers pmap, D={k} x V=1"] = (
        lambda: workers_way(model, variables, batch, k, "pmap", devices[:k]))
  if not args.skip_vmap:
    ways[f"Workers vmap, D=1 x V={k}"] = (
        lambda: workers_way(model, variables, batch, k, "vmap", devices[:1]))
  for d in (1, 2):
    if d <= len(devices) and k % d == 0:
      ways[f"sequential (unrolled grads + vmapped update), D={d} x V={k // d}"] = (
          lambda d=d: sequential_way(model, variables, batch, k, devices[:d]))

  calls, states = {}, {}
  for name, build in ways.items():
    calls[name], states[name] = build()
  # One step each from the same start: the multi-worker ways must agree.
  first = {}
  for name, call in calls.items():
    call()
    first[name] = jax.tree.map(np.asarray, states[name]["p"])
  names = list(ways)
  baseline, reference = names[0], names[1] if len(names) > 1 else None
  cpu = {}
  times = common.time_interleaved(calls, rounds=args.rounds, warmup=1, cpu_times=cpu)
  results = []
  for name in names[1:]:
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(
        jax.tree.leaves(first[name]), jax.tree.leaves(first[reference])))
    results.append(common.paired_result(
        NAME, f"{k} workers x {b}: {name}", baseline, times[name], times[baseline],
        work=k * b, unit="images/s", higher_is_better=True, goal="≥ 0.8",
        goal_fn=lambda r: r >= 0.8, cpu_times=cpu[name],
        baseline_cpu_times=cpu[baseline],
        extra={"max_abs_param_diff_after_one_step_vs_" + reference: diff},
        note=f"params after 1 step differ from {reference} by ≤ {diff:.1e}"))
  fastest = max(results, key=lambda r: r.value)
  steps = trees.table1_steps()
  seconds = steps * 32 * 256 / fastest.value
  projection = (
      f"Fastest way: {fastest.case} at {fastest.value:.1f} images/s. "
      f"Table-1 run (300 epochs x 50,000 // 8,192 = {steps} steps of K=32 x B=256): "
      f"projected {seconds / 3600:.1f} h on this device "
      f"(steps x 8,192 / images/s, assuming time linear in the global batch).")
  common.write_results(
      NAME, "Virtual workers: K x B on D devices against one worker at batch K·B",
      results, sections=[("Projected Table-1 wall time", projection)],
      settings=common.settings_of(args), out_dir=args.out_dir)


if __name__ == "__main__":
  main()
