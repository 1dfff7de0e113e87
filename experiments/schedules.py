"""When things happen in a run: its length, the learning rate γ_t, the periodic actions."""

from __future__ import annotations

import ml_collections
import optax

import extrap_optax


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`num_steps` when set, else `num_epochs` worth of steps (at least one)."""
  if config.num_steps > 0:
    return config.num_steps
  return max(1, round(config.num_epochs * steps_per_epoch))


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  num_steps: int) -> optax.Schedule:
  """The learning rate γ_t: Goyal et al. (with or without decay) or inverse sqrt."""
  schedule, workers = config.schedule, config.workers
  goyal_args = dict(
      num_workers=workers.num_workers, local_batch_size=workers.local_batch_size,
      reference_batch_size=schedule.reference_batch_size or None,
      steps_per_epoch=steps_per_epoch, warmup_epochs=schedule.warmup_epochs)
  lr = config.optimizer.base_learning_rate
  if schedule.name == "goyal":
    return extrap_optax.goyal_schedule(
        lr, total_steps=num_steps, decay_fractions=schedule.decay_fractions,
        decay_factor=schedule.decay_factor, **goyal_args)
  if schedule.name == "constant":
    return extrap_optax.constant_after_warmup(lr, **goyal_args)
  if schedule.name == "inverse_sqrt":
    return extrap_optax.inverse_sqrt_schedule(
        config.model.kwargs.get("d_model", 256),
        global_batch_size=workers.num_workers * workers.local_batch_size,
        reference_warmup_steps=schedule.reference_warmup_steps,
        scale=schedule.scale)
  raise ValueError(f"Unknown schedule.name {schedule.name!r}; choose goyal, "
                   "constant or inverse_sqrt.")


def is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def evaluation_steps(config: ml_collections.ConfigDict,
                     num_steps: int) -> tuple[set[int], set[int]]:
  """The steps of the test evaluations and of the training-subset ones."""
  if config.eval_every_steps > 0:
    tests = set(range(config.eval_every_steps, num_steps + 1,
                      config.eval_every_steps))
  else:
    count = max(1, config.num_evals)
    tests = {round(num_steps * i / count) for i in range(1, count + 1)}
  tests = (tests | {num_steps}) - {0}
  every = config.train_eval_every_steps
  if config.data.train_eval_size <= 0:
    return tests, set()
  if every <= 0:
    return tests, tests
  return tests, set(range(every, num_steps + 1, every)) | {num_steps}
