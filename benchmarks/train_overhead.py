"""End-to-end cost of EXTRAP-SGD in a ResNet-20 train step, against mini-batch SGD.

Same model, same batch, same everything but the optimizer; goal: within 3%.

- one worker: a jitted step at batch `--batch` (default 128), params, BN
  statistics and optimizer state donated, `extrap_sgd` against
  `minibatch_sgd` (both with weight decay 1e-4, as in the paper);
- K workers through `extrap_optax.Workers` (default backend, one worker per
  device on 8 fake CPU devices here), local batch `--batch` / K.

Run: `python -m benchmarks.train_overhead [--rounds N] [--batch B] [--workers K]`.
"""

from benchmarks import common

common.use_fake_cpu_devices(8)

# pylint: disable=wrong-import-position
import argparse

import jax

import extrap_optax
from benchmarks import trees

NAME = "train_overhead"
LR = 0.1
WEIGHT_DECAY = 1e-4


def optimizers(num_workers: int, axis_name):
  """Baseline and candidate with the paper's ResNet-20 settings."""
  return {
      "minibatch_sgd": extrap_optax.minibatch_sgd(
          LR, weight_decay=WEIGHT_DECAY, axis_name=axis_name),
      "extrap_sgd": extrap_optax.extrap_sgd(
          LR, extrapolation_rate=LR / num_workers, weight_decay=WEIGHT_DECAY,
          axis_name=axis_name),
  }


def one_worker_steppers(model, variables, batch):
  """name -> one donated train step (single device, no collectives)."""
  calls = {}
  for name, tx in optimizers(1, None).items():
    step = jax.jit(trees.resnet_train_step(model, tx), donate_argnums=(0, 1, 2))
    state = {"p": jax.tree.map(jax.numpy.copy, variables["params"]),
             "b": jax.tree.map(jax.numpy.copy, variables["batch_stats"])}
    state["o"] = tx.init(state["p"])
    device_batch = jax.device_put(batch)

    def call(step=step, state=state, device_batch=device_batch):
      state["p"], state["b"], state["o"], loss = step(
          state["p"], state["b"], state["o"], device_batch)
      jax.block_until_ready(loss)

    calls[name] = call
  return calls


def workers_steppers(model, variables, batch, num_workers: int, backend: str):
  """name -> one donated train step of K workers through `Workers`."""
  workers = extrap_optax.Workers(num_workers, backend=backend)
  calls = {}
  for name, tx in optimizers(num_workers, workers.axis_name).items():
    step = workers.map(trees.resnet_train_step(model, tx), donate_argnums=(0, 1, 2))
    state = {"p": workers.replicate(variables["params"]),
             "b": workers.replicate(variables["batch_stats"])}
    state["o"] = workers.map(tx.init)(state["p"])
    split = workers.split(batch)

    def call(step=step, state=state, split=split):
      state["p"], state["b"], state["o"], loss = step(
          state["p"], state["b"], state["o"], split)
      jax.block_until_ready(loss)

    calls[name] = call
  return calls, repr(workers)


def main(argv=None) -> None:
  """Runs the benchmark and writes the result files."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--batch", type=int, default=128, help="global batch")
  parser.add_argument("--workers", type=int, default=8, help="K for the Workers case")
  parser.add_argument("--backend", default="shard_map")
  common.add_out_dir_argument(parser)
  args = parser.parse_args(argv)
  print(f"device: {jax.devices()[0]} ({len(jax.devices())} devices)")

  model, variables = trees.resnet20()
  batch = trees.cifar_batch(args.batch)
  results = []
  cases = [("one worker, batch %d" % args.batch,
            one_worker_steppers(model, variables, batch))]
  k_calls, k_desc = workers_steppers(model, variables, batch, args.workers, args.backend)
  cases.append((f"{k_desc}, local batch {args.batch // args.workers}", k_calls))
  for label, calls in cases:
    cpu = {}
    times = common.time_interleaved(calls, rounds=args.rounds, cpu_times=cpu)
    results.append(common.paired_result(
        NAME, f"extrap_sgd train step, {label}", "minibatch_sgd train step",
        times["extrap_sgd"], times["minibatch_sgd"], work=args.batch,
        unit="images/s", higher_is_better=True, goal="≥ 0.97",
        goal_fn=lambda r: r >= 0.97, cpu_times=cpu["extrap_sgd"],
        baseline_cpu_times=cpu["minibatch_sgd"]))
  common.write_results(NAME, "EXTRAP-SGD against mini-batch SGD, ResNet-20 train step",
                       results, settings=common.settings_of(args), out_dir=args.out_dir)


if __name__ == "__main__":
  main()
