"""The one trainer for every task, method and scale: step functions and a loop.

`train_and_evaluate(config, workdir)` runs one configuration with K workers
of `extrap_optax.Workers`: `set_up` builds the workers, the task
(`experiments.tasks`), the schedule and the method's optimizer
(`experiments.methods`); `train_step` is one worker's step (under
`Workers.map`), `eval_step` measures the model `evaluation_point` gives; the
loop runs the periodic actions (log, evaluate, checkpoint, probe) at the
steps of `experiments.schedules`. In `workdir` go `config.json`, the metrics
log (`metrics.jsonl` and `tb/`, `experiments.metrics_log`), `checkpoints/`,
`summary.json` and `curves.png` (see docs/experiments.md).

A run directory with checkpoints is resumed from the newest intact one; data
order and random keys are functions of (seed, step), so the resumed run
follows the uninterrupted trajectory exactly, and the log is cut back to the
restored step. A non-finite training loss stops the run with
`NonFiniteLossError` (after the finite records before it are written),
non-finite parameters at a checkpoint with `NonFiniteParametersError`; the
non-finite state is never saved, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax
from experiments import checkpointing
from experiments import diagnostics
from experiments import methods
from experiments import metrics_log
from experiments import random_streams
from experiments import schedules
from experiments import report
from experiments import run_info
from experiments import tasks
from experiments import worker_arrays
from experiments.configs import validation


class TrainingDivergedError(RuntimeError):
  """Training produced NaN or infinite values."""


class NonFiniteLossError(TrainingDivergedError):
  """The training loss became NaN or infinite."""


class NonFiniteParametersError(TrainingDivergedError):
  """The parameters (or the optimizer's shared point) became NaN or infinite."""


def evaluation_point(workers: extrap_optax.Workers, params: Any,
                     opt_state: Any, model_state: Any) -> tuple[Any, Any]:
  """The model to evaluate, from stacked trees: (parameters, model state).

  The parameters are the library's (`Workers.evaluation_params`): the shared
  point y, or, for a local communication policy (post-local SGD, DiLoCo)
  whose workers' models differ between rounds, their average. The model
  state (BatchNorm statistics) is averaged over workers.
  """
  return (workers.evaluation_params(params, opt_state),
          extrap_optax.Workers.mean(model_state))


@dataclasses.dataclass
class Setup:
  """What a run is built from its configuration (`set_up`)."""
  config: ml_collections.ConfigDict
  workers: extrap_optax.Workers
  task: tasks.Task
  method: methods.Method
  num_steps: int
  learning_rate: optax.Schedule
  tx: optax.GradientTransformation
  dropout_key: jax.Array

  @property
  def extrapolates(self) -> bool:
    """Whether the optimizer keeps a shared point apart from the parameters."""
    state = jax.eval_shape(self.tx.init,
                           {"w": jax.ShapeDtypeStruct((1,), jnp.float32)})
    return optax.tree_utils.tree_get(state, "ExtrapolationState") is not None


def set_up(config: ml_collections.ConfigDict,
           workers: extrap_optax.Workers | None = None) -> Setup:
  """Validates `config` and builds its workers, task, schedule and optimizer.

  Raises:
    ConfigError: a configuration field is invalid (all of them are listed).
    MissingDataError: a data file the run needs is missing.
  """
  # Bad fields and missing files fail here, before any loading or compiling.
  validation.validate(config, num_processes=jax.process_count())
  tasks.check_data(config)
  workers = workers or extrap_optax.Workers(config.workers.num_workers,
                                            backend=config.workers.backend)
  task = tasks.make_task(config, workers)
  num_steps = schedules.total_steps(config, task.steps_per_epoch)
  learning_rate = schedules.make_schedule(config, task.steps_per_epoch,
                                          num_steps)
  tx = methods.build(config, learning_rate,
                     steps_per_epoch=task.steps_per_epoch,
                     num_steps=num_steps, axis_name=workers.axis_name)
  return Setup(config, workers, task, methods.get(config.optimizer.method),
               num_steps, learning_rate, tx,
               random_streams.stream_key(config.seed, "dropout"))


def init_state(setup: Setup) -> dict[str, Any]:
  """The stacked initial state: identical parameters on all K workers."""
  # Jitted: op-by-op initialisation of a ResNet is slow on CPU.
  params, model_state = jax.jit(setup.task.init)(
      random_streams.stream_key(setup.config.seed, "init"))
  params = setup.workers.replicate(params)
  return {"params": params,
          "opt_state": setup.workers.map(setup.tx.init)(params),
          "model_state": setup.workers.replicate(model_state)}


def worker_loss(task: tasks.Task, dropout_key: jax.Array, axis_name: Any,
                model_state: Any, batch: Any, step: jax.Array):
  """One worker's `params -> (loss, (model state, metrics))` at `step`."""
  rng = jax.random.fold_in(jax.random.fold_in(dropout_key, step),
                           extrap_optax.worker_index(axis_name))
  return lambda params: task.loss(params, model_state, batch, rng, step)


def train_step(state: dict[str, Any], batch: Any, step: jax.Array, *,
               task: tasks.Task, tx: optax.GradientTransformation,
               dropout_key: jax.Array, axis_name: Any, grad_clip_norm: float,
               extrapolates: bool) -> tuple[dict[str, Any], dict[str, Any]]:
  """One worker's training step (run under `Workers.map`): new state, metrics."""
  params, opt_state = state["params"], state["opt_state"]
  loss_fn = worker_loss(task, dropout_key, axis_name, state["model_state"],
                        batch, step)
  (loss, (model_state, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  if grad_clip_norm > 0:
    # On each worker's local gradient, before averaging (App. C, footnote 11).
    grads, _ = optax.clip_by_global_norm(grad_clip_norm).update(
        grads, optax.EmptyState())
  updates, opt_state = tx.update(grads, opt_state, params)
  new_state = {"params": optax.apply_updates(params, updates),
               "opt_state": opt_state, "model_state": model_state}
  metrics = {"online_train_loss": loss, **metrics}
  if extrapolates:
    metrics.update(diagnostics.extrapolation_ratios(
        params, state["opt_state"], new_state["params"], opt_state))
  return new_state, jax.lax.pmean(metrics, axis_name)


def mean_gradient(params: Any, model_state: Any, batch: Any, step: jax.Array,
                  *, task: tasks.Task, dropout_key: jax.Array,
                  axis_name: Any) -> Any:
  """∇f of the global mini-batch at `params` (the smoothness probe's)."""
  loss_fn = worker_loss(task, dropout_key, axis_name, model_state, batch, step)
  return jax.lax.pmean(jax.grad(lambda p: loss_fn(p)[0])(params), axis_name)


class Programs(NamedTuple):
  """The compiled functions of a run (`programs`)."""
  step: Any            # (state, batch, step) -> (state, metrics); donates state
  mean_gradient: Any   # (params, model state, batch, step) -> mean gradient
  eval_point: Any      # state -> (parameters, model state), replicated
  all_finite: Any      # state -> bool


def programs(setup: Setup) -> Programs:
  """`train_step` and the host-side reductions, mapped over the workers."""
  workers = setup.workers
  static = dict(task=setup.task, dropout_key=setup.dropout_key,
                axis_name=workers.axis_name)
  replicated = (NamedSharding(workers.mesh, P())
                if workers.mesh is not None else None)
  return Programs(
      step=workers.map(functools.partial(
          train_step, tx=setup.tx, extrapolates=setup.extrapolates,
          grad_clip_norm=setup.config.optimizer.grad_clip_norm, **static),
          in_axes=(0, 0, None), donate_argnums=(0,)),
      mean_gradient=workers.map(functools.partial(mean_gradient, **static),
                                in_axes=(0, 0, 0, None)),
      eval_point=jax.jit(lambda s: evaluation_point(
          workers, s["params"], s["opt_state"], s["model_state"]),
          out_shardings=replicated),
      all_finite=jax.jit(lambda t: jnp.all(jnp.stack(
          [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(t)])),
          out_shardings=replicated))


def probe_step(setup: Setup, compiled: Programs, state: dict[str, Any],
               batch: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """A training step plus the smoothness L of its update (Figure 1b)."""
  shared = lambda s: worker_arrays.worker0(
      extrap_optax.evaluation_params(s["params"], s["opt_state"]))
  before = shared(state)
  # A copy: the step donates the state's buffers.
  model_state = jax.tree.map(jnp.copy, state["model_state"])
  state, metrics = compiled.step(state, batch, step)
  smoothness = diagnostics.smoothness(
      setup.workers, lambda p: compiled.mean_gradient(p, model_state, batch,
                                                      step),
      before, shared(state), num_steps=setup.config.probe_num_steps,
      step_fraction=setup.config.probe_step_fraction)
  metrics["smoothness"] = setup.workers.put(
      np.full(setup.workers.num_workers, smoothness, np.float32))
  return state, metrics


def eval_step(setup: Setup, compiled: Programs, state: dict[str, Any], *,
             final: bool, train_subset: bool) -> dict[str, float]:
  """The task's metrics at the evaluation point (`evaluation_point`).

  `final` marks the run's last evaluation (translation decodes BLEU there);
  `train_subset` measures the shared point's loss on the fixed training
  subset instead of the test metrics.
  """
  params, model_state = worker_arrays.host(compiled.eval_point(state))
  if train_subset:
    return setup.task.evaluate_train(params, model_state)
  return setup.task.evaluate(params, model_state, final=final)


class Result(NamedTuple):
  """What `train_and_evaluate` returns: the summary and the final state."""
  summary: dict[str, Any]
  state: dict[str, Any]


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path, *,
                       stop_at_step: int | None = None,
                       setup: Setup | None = None) -> Result:
  """Runs (or resumes) training in `workdir` to the end (see the module docstring).

  Args:
    config: the run configuration.
    workdir: the run directory (created).
    stop_at_step: stop after this step as if the job were killed there
      (time-boxed jobs, resumption tests); it is checkpointed.
    setup: `set_up(config)` when the caller built it already.

  Raises:
    ConfigError, MissingDataError: see `set_up`.
    NonFiniteLossError: the training loss became NaN or infinite.
    NonFiniteParametersError: the state became non-finite by a checkpoint.
  """
  setup = setup or set_up(config)
  compiled = programs(setup)
  task, num_steps, workdir = setup.task, setup.num_steps, pathlib.Path(workdir)
  main_process = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  run_info.code_version()
  if main_process:
    checkpointing.write_atomically(
        workdir / "config.json",
        config.to_json_best_effort(indent=2, sort_keys=True))
  checkpointer = checkpointing.Checkpointer(
      workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
  resized = []
  step, state, problems = checkpointer.restore_latest(
      init_state(setup), resize=lambda saved: worker_arrays.resize(
          setup.workers, saved, resized))
  problems += resized
  log = metrics_log.MetricsLog(workdir, last_step=step, enabled=main_process)
  test_steps, train_eval_steps = schedules.evaluation_steps(config, num_steps)
  last_step = min(num_steps, stop_at_step or num_steps)
  progress = tqdm.tqdm(total=num_steps, initial=step, desc=config.name,
                       disable=not (config.progress_bar and main_process),
                       dynamic_ncols=True)
  pending, last = [], {"train": {}, "test": {}, "train_subset": {}}
  start_time = time.perf_counter()
  first_step_seconds = None

  def summarize(status, message=""):
    return run_info.write_summary(workdir, {
        "name": config.name, "preset": config.preset, "row": config.row,
        "column": config.column, "seed": config.seed, "status": status,
        "message": message, "steps": step, "total_steps": num_steps,
        "epochs": step / task.steps_per_epoch,
        "steps_per_epoch": task.steps_per_epoch,
        "main_metric": task.main_metric,
        "higher_is_better": task.higher_is_better,
        "wall_seconds": time.perf_counter() - start_time,
        "first_step_seconds": first_step_seconds,
        "data_source": task.data_source, "checkpoint_problems": problems,
        "final_online_train_loss": last["train"].get("online_train_loss"),
        **{f"final_{k}": v
           for k, v in {**last["test"], **last["train_subset"]}.items()},
    }, main_process)

  try:
    while step < last_step:
      batch = task.train_batch(step)
      if config.probe_every_steps > 0 and (step + 1) % config.probe_every_steps == 0:
        state, metrics = probe_step(setup, compiled, state, batch, step)
      else:
        state, metrics = compiled.step(state, batch, step)
      step += 1
      pending.append((step, metrics))
      if first_step_seconds is None:
        jax.block_until_ready(metrics)
        first_step_seconds = time.perf_counter() - start_time
        last_time, pending_start = time.perf_counter(), step
      tests, train_evals = step in test_steps, step in train_eval_steps
      # A time-boxed job also saves where it stops.
      checkpoint = step == last_step or schedules.is_due(
          step, config.checkpoint_every_steps, num_steps)
      if not (tests or train_evals or checkpoint
              or schedules.is_due(step, config.log_every_steps, num_steps)):
        progress.update(1)
        continue
      records, non_finite = metrics_log.step_records(
          [step for step, _ in pending], worker_arrays.host(
              worker_arrays.first_row(setup.workers.mesh)(
                  [m for _, m in pending])),
          task.steps_per_epoch, setup.learning_rate)
      done, pending = step - pending_start, []
      throughput = (done * task.examples_per_step
                    / max(time.perf_counter() - last_time, 1e-9)) if done else 0.0
      pending_start = step
      for record in records:
        if record["step"] == step and throughput:
          record["throughput"] = throughput
        log.write(record)
      if non_finite:
        raise NonFiniteLossError(non_finite)
      last["train"] = records[-1]
      progress.set_postfix(loss=f"{last['train']['online_train_loss']:.4f}",
                           **{task.throughput_unit: f"{throughput:.0f}"})
      evaluation = {}
      for kind, due in (("train_subset", train_evals), ("test", tests)):
        if due:
          last[kind] = eval_step(setup, compiled, state,
                                 final=step == num_steps,
                                 train_subset=kind == "train_subset")
          evaluation.update(last[kind])
      if tests:
        progress.write(f"[{config.name}] step {step}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in evaluation.items()))
      if evaluation:
        log.write({"step": step, "epoch": step / task.steps_per_epoch,
                   **evaluation})
      if checkpoint:
        if not bool(worker_arrays.host(compiled.all_finite(state))):
          raise NonFiniteParametersError(
              f"The training state (parameters, optimizer or model state) "
              f"became non-finite by step {step}.")
        checkpointer.save(step, state)
      # Throughput counts training only, not evaluation and saving.
      last_time = time.perf_counter()
      progress.update(1)
  except TrainingDivergedError as error:
    message = (f"Run {config.name!r} stopped: {error} The last good "
               f"checkpoint is step {checkpointer.latest_step()} in "
               f"{checkpointer.directory}; try a lower learning rate.")
    progress.write(message)
    last["test"] = last["train_subset"] = {}
    summarize("diverged", message)
    raise type(error)(message) from error
  finally:
    progress.close()
    checkpointer.close()
    log.close()
  # Resumed from the final checkpoint: nothing trained, still report.
  for kind, due in (("test", True), ("train_subset", bool(train_eval_steps))):
    if step == num_steps and due and not last[kind]:
      last[kind] = eval_step(setup, compiled, state, final=True,
                             train_subset=kind == "train_subset")
  summary = summarize("completed" if step == num_steps else "stopped")
  if main_process:
    report.plot_run(workdir)
  return Result(summary, state)


def final_parameters(setup: Setup, state: dict[str, Any]) -> Any:
  """The evaluated model's parameters (the shared point y), as numpy."""
  return worker_arrays.host(programs(setup).eval_point(state))[0]
