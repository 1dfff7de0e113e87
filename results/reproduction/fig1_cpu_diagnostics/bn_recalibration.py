"""How much of a run's eval-mode y-loss is the BatchNorm running statistics.

For each run directory given, restores its final checkpoint (from a copy, so
the run is not touched) and measures the shared point y on the study's fixed
5,000-image training subset and on the test set, in eval mode:

- with the run's own running statistics (worker-averaged, gathered during
  training at the points where the gradients were taken: y for mini-batch
  SGD, the extrapolated points z for EXTRAP-SGD), which is what the study's
  `shared_point_train_loss` measures;
- with running statistics recomputed at y: `--passes` chunks of B training
  subset images in train mode, each updating the statistics with the model's
  momentum, so that those of the trained run weigh less than 0.9^passes.

usage (from the repository root):
  PYTHONPATH=. EXTRAP_OPTAX_DATA_DIR=../shared/data python \
      results/reproduction/fig1_cpu_diagnostics/bn_recalibration.py RUN_DIR...
"""
import argparse
import json
import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from experiments import checkpointing  # noqa: E402
from experiments import train  # noqa: E402
from experiments.input_pipeline import cifar  # noqa: E402


def recalibrated(task, params, model_state, passes: int):
  """Running statistics recomputed at `params` on the training subset."""
  batch = task.config.workers.local_batch_size
  images, labels = task.train_eval_images, task.train_eval_labels
  order = np.random.default_rng(0).permutation(len(labels))

  @jax.jit
  def update(state, chunk):
    _, new_state = task.model.apply(
        {"params": params, **state}, cifar.normalize(chunk, task.mean,
                                                     task.std),
        train=True, mutable=list(state))
    return new_state

  for i in range(passes):
    rows = order[(i * batch) % len(labels):][:batch]
    model_state = update(model_state, images[rows])
  return model_state


def measure(run_dir: pathlib.Path, passes: int) -> dict[str, float]:
  config = ml_collections.ConfigDict(
      json.loads((run_dir / "config.json").read_text()))
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    step = max(int(p.name) for p in (run_dir / "checkpoints").iterdir()
               if p.name.isdigit())
    shutil.copytree(run_dir / "checkpoints" / str(step),
                    scratch / "checkpoints" / str(step))
    trainer = train.Trainer(config, scratch)
    checkpointer = checkpointing.Checkpointer(scratch / "checkpoints",
                                              max_to_keep=2)
    checkpointer.verify(step)
    state = checkpointer.restore(step, trainer.init_state())
  params, model_state = train._host(trainer._eval_point(
      state["params"], state["opt_state"], state["model_state"]))
  task = trainer.task
  fresh = recalibrated(task, params, model_state, passes)
  result = {"step": step}
  for name, stats in (("run's", model_state), ("recomputed at y", fresh)):
    train_loss, train_acc = task._loss_and_accuracy(
        params, stats, task.train_eval_images, task.train_eval_labels)
    test_loss, test_acc = task._loss_and_accuracy(
        params, stats, task.test_images, task.test_labels)
    result[name] = {"train_subset_loss": round(train_loss, 4),
                    "train_subset_accuracy": round(train_acc, 4),
                    "test_loss": round(test_loss, 4),
                    "test_accuracy": round(test_acc, 4)}
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dirs", nargs="+", type=pathlib.Path)
  parser.add_argument("--passes", type=int, default=50)
  args = parser.parse_args()
  for run_dir in args.run_dirs:
    print(run_dir, json.dumps(measure(run_dir, args.passes)), flush=True)


if __name__ == "__main__":
  main()
