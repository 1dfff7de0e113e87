"""The one trainer for every task, method and scale.

`Trainer(config, run_dir).train()` runs one configuration (see
`experiments/configs/base.py` for the fields) with K workers of
`extrap_optax.Workers` on whatever devices exist, and writes to `run_dir`:

- `config.json`: the resolved configuration;
- `metrics.jsonl`: one JSON record per step (`online_train_loss`, the loss
  where each worker's gradient was taken, i.e. the extrapolated point z for
  EXTRAP-SGD; the learning rate; for extrapolated methods the per-tensor
  `extrapolation_ratio_median`/`_max`, ‖z − y‖/‖Δy‖) and per evaluation (test
  metrics, and `shared_point_train_loss`: the shared point's loss on a fixed
  training subset, the one training loss comparable across methods);
- `tb/`: the same metrics as TensorBoard summaries (tensorboardX);
- `checkpoints/`: orbax checkpoints of the whole stacked state;
- `summary.json`: status and final metrics; `curves.png`: the learning curves.

A run directory that holds checkpoints is resumed from the newest one; data
order and random keys are functions of (seed, step), so the resumed run
follows the uninterrupted trajectory exactly, and `metrics.jsonl` and `tb/`
are cut back to the restored step (`tb/` is rewritten from `metrics.jsonl`,
whose records are appended line by line, so a crash loses at most the line
being written, and that step is redone). A damaged newest checkpoint is
reported and the previous one used (`checkpointing.Checkpointer`).

A non-finite training loss stops the run with `NonFiniteLossError` (after the
finite records before it are written), non-finite parameters at a checkpoint
with `NonFiniteParametersError`; both are `TrainingDivergedError`s. The
non-finite state is never saved, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax
from experiments import checkpointing
from experiments import random_streams
from experiments.configs import base as config_base
from experiments.configs import validation as config_validation
from experiments import report
from experiments import tasks



class TrainingDivergedError(RuntimeError):
  """Training produced NaN or infinite values."""


class NonFiniteLossError(TrainingDivergedError):
  """The training loss became NaN or infinite."""


class NonFiniteParametersError(TrainingDivergedError):
  """The parameters (or the optimizer's shared point) became NaN or infinite."""


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`num_steps` when set, else `num_epochs` worth of steps (at least one)."""
  if config.num_steps > 0:
    return config.num_steps
  return max(1, round(config.num_epochs * steps_per_epoch))


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  num_steps: int) -> optax.Schedule:
  """The learning rate γ_t: Goyal et al. (with or without decay) or inverse sqrt."""
  schedule = config.schedule
  num_workers = config.workers.num_workers
  local_batch = config.workers.local_batch_size
  goyal_args = dict(
      num_workers=num_workers, local_batch_size=local_batch,
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
        global_batch_size=num_workers * local_batch,
        reference_warmup_steps=schedule.reference_warmup_steps,
        scale=schedule.scale)
  raise ValueError(f"Unknown schedule.name {schedule.name!r}; choose goyal, "
                   "constant or inverse_sqrt.")


def local_start_step(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     num_steps: int) -> int:
  """Post-local SGD's t0: `local_start_epoch`, else the first rate decay."""
  start_epoch = config.optimizer.local_start_epoch
  if start_epoch >= 0:
    return round(start_epoch * steps_per_epoch)
  fractions = config.schedule.decay_fractions
  if config.schedule.name != "goyal" or not fractions:
    raise ValueError(
        "Post-local SGD starts at the first learning-rate decay by default, "
        "but this schedule has none: set optimizer.local_start_epoch.")
  # The boundary rule of `goyal_schedule`: the first step at or past f·T.
  return math.ceil(round(fractions[0] * num_steps, 6))


def make_optimizer(config: ml_collections.ConfigDict,
                   learning_rate: optax.Schedule, steps_per_epoch: int,
                   num_steps: int,
                   axis_name: Any) -> optax.GradientTransformation:
  """The method of `config.optimizer` over the workers' `axis_name`.

  With `optimizer.extrapolation_scaling = "trust_ratio"` (EXTRAP-SGD's
  LARS-scaled past gradient, App. C.1) the extrapolation rate is
  γ̂_t = c·(γ̃/K)·γ_t/γ_peak, with γ_peak = γ0·K·B/B_ref the peak of the
  Goyal et al. schedule; "none" (the default) uses γ̂_t = c·γ_t/K.
  """
  opt = config.optimizer
  num_workers = config.workers.num_workers
  method = opt.method
  scaling = opt.get("extrapolation_scaling", "none")
  if scaling not in config_base.EXTRAPOLATION_SCALINGS:
    raise ValueError(
        f"Unknown optimizer.extrapolation_scaling {scaling!r}; choose one of "
        f"{config_base.EXTRAPOLATION_SCALINGS}.")
  scaled_methods = ("extrap_sgd", "post_local_extrap_sgd")
  if scaling != "none" and method not in scaled_methods:
    raise ValueError(
        f"optimizer.extrapolation_scaling={scaling!r} applies to the methods "
        f"{scaled_methods} only (the past-gradient extrapolation), not to "
        f"optimizer.method={method!r}: set it to 'none'.")
  if scaling == "trust_ratio":
    if not opt.trust_coefficient:
      raise ValueError(
          "optimizer.extrapolation_scaling='trust_ratio' sizes the "
          "extrapolation as a LARS step, γ̂_t = c·(γ̃/K)·γ_t/γ_peak, and needs "
          "LARS: optimizer.trust_coefficient is 0. Set "
          "optimizer.trust_coefficient > 0 (the paper: 0.02) or "
          "optimizer.extrapolation_scaling='none'.")
    if config.schedule.name not in ("goyal", "constant"):
      raise ValueError(
          "optimizer.extrapolation_scaling='trust_ratio' divides by the peak "
          "of the Goyal et al. schedule (schedule.name 'goyal' or "
          f"'constant'), got schedule.name={config.schedule.name!r}.")
    local_batch = config.workers.local_batch_size
    reference_batch = config.schedule.reference_batch_size or local_batch
    peak = (opt.base_learning_rate * num_workers * local_batch
            / reference_batch)
    factor = opt.extrapolation_scale * opt.trust_coefficient / num_workers
    extrapolation_rate = lambda count: factor * learning_rate(count) / peak
  else:
    extrapolation_rate = extrap_optax.extrapolation_rate_schedule(
        learning_rate, num_workers=num_workers, scale=opt.extrapolation_scale)
  sgd_args = dict(momentum=opt.momentum, weight_decay=opt.weight_decay,
                  trust_coefficient=opt.trust_coefficient or None,
                  axis_name=axis_name)
  adam_args = dict(b1=opt.b1, b2=opt.b2, eps=opt.eps, axis_name=axis_name)
  if method == "minibatch_sgd":
    return extrap_optax.minibatch_sgd(learning_rate, **sgd_args)
  if method == "extrap_sgd":
    return extrap_optax.extrap_sgd(
        learning_rate, extrapolation_rate=extrapolation_rate,
        extrapolation_scaling=scaling, **sgd_args)
  if method == "noise_extrap_sgd":
    return extrap_optax.noise_extrap_sgd(
        learning_rate, extrapolation_rate=extrapolation_rate, noise=opt.noise,
        seed=random_streams.stream_seed(config.seed, "noise"), **sgd_args)
  if method in ("post_local_sgd", "post_local_extrap_sgd"):
    return extrap_optax.post_local_sgd(
        learning_rate,
        start_step=local_start_step(config, steps_per_epoch, num_steps),
        sync_period=opt.sync_period,
        extrapolation_rate=(extrapolation_rate
                            if method == "post_local_extrap_sgd" else 0.0),
        extrapolation_scaling=scaling, **sgd_args)
  if method == "adam":
    return extrap_optax.adam(learning_rate, **adam_args)
  if method == "extrap_adam":
    return extrap_optax.extrap_adam(
        learning_rate, extrapolation_rate=extrapolation_rate, **adam_args)
  raise ValueError(f"Unknown optimizer.method {method!r}.")


def _evaluation_steps(config: ml_collections.ConfigDict,
                      num_steps: int) -> set[int]:
  if config.eval_every_steps > 0:
    steps = set(range(config.eval_every_steps, num_steps + 1,
                      config.eval_every_steps))
  else:
    count = max(1, config.num_evals)
    steps = {round(num_steps * i / count) for i in range(1, count + 1)}
  return (steps | {num_steps}) - {0}


def _train_evaluation_steps(config: ml_collections.ConfigDict,
                            num_steps: int) -> set[int]:
  """When the shared point's training loss is measured (empty: never)."""
  if config.data.train_eval_size <= 0:
    return set()
  every = config.train_eval_every_steps
  if every <= 0:
    return _evaluation_steps(config, num_steps)
  return set(range(every, num_steps + 1, every)) | {num_steps}


def extrapolation_ratios(params: Any, opt_state: Any, next_params: Any,
                         next_opt_state: Any) -> dict[str, jax.Array]:
  """How far each tensor is extrapolated, relative to the step just taken.

  Per tensor j, r_j = ‖z_{t+1,j} − y_{t+1,j}‖ / ‖y_{t+1,j} − y_{t,j}‖: the
  length of the extrapolation for the next gradient against the length of the
  shared point's last update (tensors that did not move are left out). One
  worker's view; the trainer averages it over workers.

  Returns:
    `extrapolation_ratio_median` and `extrapolation_ratio_max` over tensors.
  """
  shared = extrap_optax.evaluation_params(params, opt_state)
  next_shared = extrap_optax.evaluation_params(next_params, next_opt_state)

  def norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))

  offsets = jax.tree.leaves(jax.tree.map(
      lambda z, y: norm(z - y), next_params, next_shared))
  steps = jax.tree.leaves(jax.tree.map(
      lambda new, old: norm(new - old), next_shared, shared))
  offsets, steps = jnp.stack(offsets), jnp.stack(steps)
  moved = steps > 0
  ratios = jnp.where(moved, offsets / jnp.where(moved, steps, 1.0), jnp.nan)
  return {"extrapolation_ratio_median": jnp.nan_to_num(jnp.nanmedian(ratios)),
          "extrapolation_ratio_max": jnp.nan_to_num(jnp.nanmax(ratios))}


def _add_scalars(writer: Any, record: dict[str, Any]) -> None:
  for key, value in record.items():
    if key not in ("step", "epoch"):
      writer.add_scalar(key, value, record["step"])


def _is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def _host(tree: Any) -> Any:
  """A replicated (or single-device) tree as numpy, on every process."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _worker0(tree: Any) -> Any:
  """Worker 0's copy of a stacked tree, as numpy, on every process."""
  leaves = jax.tree.leaves(tree)
  if all(x.is_fully_addressable for x in leaves):
    return jax.tree.map(lambda x: x[0], _host(tree))
  # Multi-host: a process's first shard holds its own first worker (worker 4
  # of 8 on process 1), so worker 0's row is first replicated everywhere.
  return _host(_first_row(leaves[0].sharding.mesh)(tree))


_FIRST_ROW_FNS: dict[Any, Any] = {}


def _first_row(mesh: jax.sharding.Mesh | None) -> Any:
  """A jitted `tree -> row 0 of each leaf`, replicated over `mesh` if any."""
  if mesh not in _FIRST_ROW_FNS:
    _FIRST_ROW_FNS[mesh] = jax.jit(
        lambda t: jax.tree.map(lambda x: x[0], t),
        out_shardings=None if mesh is None else NamedSharding(mesh, P()))
  return _FIRST_ROW_FNS[mesh]


class Trainer:
  """Trains one configuration in one run directory (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict,
               run_dir: str | pathlib.Path,
               workers: extrap_optax.Workers | None = None):
    """Builds the workers, the task, the optimizer and the step functions.

    Args:
      config: the run configuration.
      run_dir: where the run's artifacts go (created).
      workers: the workers to use; default `Workers(config.workers.num_workers,
        backend=config.workers.backend)` over all devices.

    Raises:
      ConfigError: a configuration field is invalid (all of them are listed).
      MissingDataError: a data file the run needs is missing.
    """
    # Bad fields and missing files fail here, before any loading or compiling.
    config_validation.validate(config, num_processes=jax.process_count())
    tasks.check_data(config)
    self.config = config
    self.run_dir = pathlib.Path(run_dir)
    self.is_main_process = jax.process_index() == 0
    self.workers = workers or extrap_optax.Workers(
        config.workers.num_workers, backend=config.workers.backend)
    self.task = tasks.make_task(config, self.workers)
    self.steps_per_epoch = self.task.steps_per_epoch
    self.num_steps = total_steps(config, self.steps_per_epoch)
    self.learning_rate = make_schedule(config, self.steps_per_epoch,
                                       self.num_steps)
    axis_name = self.workers.axis_name
    self.axis_name = axis_name
    self.tx = make_optimizer(config, self.learning_rate, self.steps_per_epoch,
                             self.num_steps, axis_name)
    self.extrapolates = _has_extrapolation_state(self.tx)
    self.checkpoint_problems: list[str] = []
    code_version()
    if config.data.train_eval_size > 0 and not hasattr(self.task,
                                                       "evaluate_train"):
      raise ValueError(
          f"data.train_eval_size={config.data.train_eval_size}, but task "
          f"{config.task!r} has no training-subset evaluation; set "
          "data.train_eval_size=0.")
    self.dropout_key = random_streams.stream_key(config.seed, "dropout")
    self._train_step = self.workers.map(
        self._step_fn, in_axes=(0, 0, None), donate_argnums=(0,))
    self._mean_gradient = self.workers.map(
        self._mean_gradient_fn, in_axes=(0, 0, 0, None))
    replicated = (NamedSharding(self.workers.mesh, P())
                  if self.workers.mesh is not None else None)
    averages_points = config.optimizer.method.startswith("post_local")
    self._first = _first_row(self.workers.mesh)
    self._eval_point = jax.jit(
        make_eval_point(averages_points), out_shardings=replicated)
    self._all_finite = jax.jit(
        lambda t: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                     for x in jax.tree.leaves(t)])),
        out_shardings=replicated)

  # Per-worker step functions (run under `Workers.map`).

  def _loss_fn(self, model_state, batch, step):
    rng = jax.random.fold_in(jax.random.fold_in(self.dropout_key, step),
                             extrap_optax.worker_index(self.axis_name))
    return lambda p: self.task.loss(p, model_state, batch, rng, step)

  def _step_fn(self, state, batch, step):
    params, opt_state = state["params"], state["opt_state"]
    loss_fn = self._loss_fn(state["model_state"], batch, step)
    (loss, (model_state, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    clip = self.config.optimizer.grad_clip_norm
    if clip > 0:
      # On each worker's local gradient, before averaging (App. C, footnote 11).
      grads, _ = optax.clip_by_global_norm(clip).update(grads,
                                                        optax.EmptyState())
    updates, opt_state = self.tx.update(grads, opt_state, params)
    new_state = {"params": optax.apply_updates(params, updates),
                 "opt_state": opt_state, "model_state": model_state}
    metrics = {"online_train_loss": loss, **metrics}
    if self.extrapolates:
      metrics.update(extrapolation_ratios(
          params, state["opt_state"], new_state["params"], opt_state))
    return new_state, jax.lax.pmean(metrics, self.axis_name)

  def _mean_gradient_fn(self, params, model_state, batch, step):
    """∇f of the global mini-batch at `params` (the smoothness probe's)."""
    loss_fn = self._loss_fn(model_state, batch, step)
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    return jax.lax.pmean(grads, self.axis_name)

  # Host side.

  def _shared_point(self, state):
    return extrap_optax.evaluation_params(state["params"], state["opt_state"])

  def _probe_step(self, state, batch, step):
    """A training step plus the smoothness L of its update (Figure 1b).

    The probe's gradient evaluations run one program at a time from the host,
    on worker 0's shared point: unrolled into one program XLA:CPU keeps all of
    them live (22 GB for ResNet-20 on 8 devices), and in a `lax.map` loop it
    runs convolutions 27x slower.
    """
    before = _worker0(self._shared_point(state))
    # A copy: the step donates the state's buffers.
    model_state = jax.tree.map(jnp.copy, state["model_state"])
    state, metrics = self._train_step(state, batch, step)
    update = jax.tree.map(np.subtract, _worker0(self._shared_point(state)),
                          before)
    smoothness = extrap_optax.smoothness_probe(
        lambda p: _worker0(self._mean_gradient(
            self.workers.replicate(p), model_state, batch, step)),
        before, update, num_steps=self.config.probe_num_steps,
        step_fraction=self.config.probe_step_fraction)
    metrics["smoothness"] = self.workers.put(
        np.full(self.workers.num_workers, float(smoothness), np.float32))
    return state, metrics

  def init_state(self) -> dict[str, Any]:
    """The stacked initial state: identical parameters on all K workers."""
    # Jitted: op-by-op initialisation of a ResNet is slow on CPU.
    params, model_state = jax.jit(self.task.init)(
        random_streams.stream_key(self.config.seed, "init"))
    params = self.workers.replicate(params)
    opt_state = self.workers.map(self.tx.init)(params)
    return {"params": params, "opt_state": opt_state,
            "model_state": self.workers.replicate(model_state)}

  def evaluate(self, state: dict[str, Any], *,
               final: bool = True) -> dict[str, float]:
    """Test metrics at the shared point with worker-averaged model state.

    `final` marks the run's last evaluation, where a task measures what it
    may skip at the others (translation's test BLEU).
    """
    params, model_state = _host(self._eval_point(
        state["params"], state["opt_state"], state["model_state"]))
    return self.task.evaluate(params, model_state, final=final)

  def evaluate_train(self, state: dict[str, Any]) -> dict[str, float]:
    """The shared point's loss on the fixed training subset (eval mode).

    `shared_point_train_loss` and `shared_point_train_accuracy`: the model
    every method ships (y, with worker-averaged BatchNorm statistics), on
    `data.train_eval_size` training examples without augmentation; the same
    kind of point for every method, unlike `online_train_loss`, which is
    measured where each worker's gradient was taken (z for EXTRAP-SGD).
    """
    params, model_state = _host(self._eval_point(
        state["params"], state["opt_state"], state["model_state"]))
    return self.task.evaluate_train(params, model_state)

  def final_parameters(self, state: dict[str, Any]) -> Any:
    """The shared point y (as evaluated), as numpy."""
    return _host(self._eval_point(state["params"], state["opt_state"],
                                  state["model_state"]))[0]

  def _write(self, record: dict[str, Any], writer: Any) -> None:
    if not self.is_main_process:
      return
    with open(self.run_dir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    _add_scalars(writer, record)

  def _open_logs(self, last_step: int) -> Any:
    """Cuts the logs back to `last_step` and opens the TensorBoard writer.

    Records past the restored step will be redone, so they are dropped:
    `metrics.jsonl` is rewritten atomically, and `tb/` is rewritten from it,
    since event files cannot be truncated (and TensorBoard's own purge of
    redone steps is not seen by other readers of the events). A crash while
    `tb/` is rewritten is repaired by the next resume the same way.

    Returns:
      The open `tensorboardX.SummaryWriter` of `tb/` (None off process 0).
    """
    if not self.is_main_process:
      return None
    kept = [r for r in report.read_metrics(self.run_dir)
            if r["step"] <= last_step]
    checkpointing.write_atomically(
        self.run_dir / "metrics.jsonl",
        "".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(self.run_dir / "tb", ignore_errors=True)
    writer = tensorboardX.SummaryWriter(str(self.run_dir / "tb"))
    for record in kept:
      _add_scalars(writer, record)
    writer.flush()
    return writer

  def train(self, stop_at_step: int | None = None) -> dict[str, Any]:
    """Runs (or resumes) training to the end; returns the summary.

    Args:
      stop_at_step: stop after this step as if the job were killed there
        (time-boxed jobs, resumption tests); it should be a checkpoint step.

    Raises:
      NonFiniteLossError: the training loss became NaN or infinite.
      NonFiniteParametersError: the state became non-finite by a checkpoint.
    """
    config = self.config
    self.run_dir.mkdir(parents=True, exist_ok=True)
    if self.is_main_process:
      checkpointing.write_atomically(
          self.run_dir / "config.json",
          config.to_json_best_effort(indent=2, sort_keys=True))
    checkpointer = checkpointing.Checkpointer(
        self.run_dir / "checkpoints", max_to_keep=config.keep_checkpoints)
    step, state, self.checkpoint_problems = checkpointer.restore_latest(
        self.init_state())
    writer = self._open_logs(step)
    eval_steps = _evaluation_steps(config, self.num_steps)
    train_eval_steps = _train_evaluation_steps(config, self.num_steps)
    progress = tqdm.tqdm(
        total=self.num_steps, initial=step, desc=config.name,
        disable=not (config.progress_bar and self.is_main_process),
        dynamic_ncols=True)
    pending: list[tuple[int, Any]] = []
    last_eval: dict[str, float] = {}
    last_train: dict[str, float] = {}
    last_train_eval: dict[str, float] = {}
    status = "completed"
    start_time = last_time = time.perf_counter()
    first_step_seconds = None
    try:
      last_step = min(self.num_steps, stop_at_step or self.num_steps)
      while step < last_step:
        batch = self.task.train_batch(step)
        probe = (config.probe_every_steps > 0
                 and (step + 1) % config.probe_every_steps == 0)
        run_step = self._probe_step if probe else self._train_step
        state, metrics = run_step(state, batch, step)
        step += 1
        pending.append((step, metrics))
        if first_step_seconds is None:
          jax.block_until_ready(metrics)
          first_step_seconds = time.perf_counter() - start_time
          last_time, pending_start = time.perf_counter(), step
        evaluate = step in eval_steps
        evaluate_train = step in train_eval_steps
        # A time-boxed job also saves where it stops.
        checkpoint = step == last_step or _is_due(
            step, config.checkpoint_every_steps, self.num_steps)
        if (evaluate or evaluate_train or checkpoint
            or _is_due(step, config.log_every_steps, self.num_steps)):
          records, non_finite = self._flush(pending)
          pending = []
          now = time.perf_counter()
          done = step - pending_start
          throughput = (done * self.task.examples_per_step
                        / max(now - last_time, 1e-9)) if done else 0.0
          pending_start = step
          for record in records:
            if record["step"] == step and throughput:
              record["throughput"] = throughput
            self._write(record, writer)
          if non_finite:
            raise NonFiniteLossError(non_finite)
          last_train = records[-1]
          progress.set_postfix(
              loss=f"{last_train['online_train_loss']:.4f}",
              **{self.task.throughput_unit: f"{throughput:.0f}"})
          evaluation = {}
          if evaluate_train:
            evaluation.update(self.evaluate_train(state))
            last_train_eval = dict(evaluation)
          if evaluate:
            last_eval = self.evaluate(state, final=step == self.num_steps)
            evaluation.update(last_eval)
          if evaluation:
            self._write({"step": step, "epoch": step / self.steps_per_epoch,
                         **evaluation}, writer)
          if evaluate:
            progress.write(f"[{config.name}] step {step}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in evaluation.items()))
          if checkpoint:
            if not bool(_host(self._all_finite(state))):
              raise NonFiniteParametersError(
                  f"The training state (parameters, optimizer or model "
                  f"state) became non-finite by step {step}.")
            checkpointer.save(step, state)
          # Throughput counts training only, not evaluation and saving.
          last_time = time.perf_counter()
        progress.update(1)
    except TrainingDivergedError as error:
      status = "diverged"
      message = (f"Run {config.name!r} stopped: {error} The last good "
                 f"checkpoint is step {checkpointer.latest_step()} in "
                 f"{checkpointer.directory}; try a lower learning rate.")
      progress.write(message)
      self._write_summary(status, step, {}, last_train, time.perf_counter()
                          - start_time, first_step_seconds, message=message)
      raise type(error)(message) from error
    finally:
      progress.close()
      checkpointer.close()
      if writer is not None:
        writer.close()
    self.state = state
    if step == self.num_steps:
      # Resumed from the final checkpoint: nothing trained, still report.
      if not last_eval:
        last_eval = self.evaluate(state)
      if not last_train_eval and train_eval_steps:
        last_train_eval = self.evaluate_train(state)
    if step < self.num_steps:
      status = "stopped"
    summary = self._write_summary(status, step,
                                  {**last_eval, **last_train_eval}, last_train,
                                  time.perf_counter() - start_time,
                                  first_step_seconds)
    if self.is_main_process:
      report.plot_run(self.run_dir)
    return summary

  def _flush(self, pending: list[tuple[int, Any]]
             ) -> tuple[list[dict[str, Any]], str]:
    """The pending steps' records up to a non-finite loss, and its message.

    Returns:
      `(records, message)`: the records of the steps before the first
      non-finite training loss (all of them if none), and a message naming
      that step, or "".
    """
    values = _host(self._first([m for _, m in pending]))
    records = []
    for (step, _), metrics in zip(pending, values):
      record = {"step": step, "epoch": step / self.steps_per_epoch,
                "learning_rate": float(self.learning_rate(step - 1)),
                **{k: float(v) for k, v in metrics.items()}}
      if not math.isfinite(record["online_train_loss"]):
        return records, (f"The training loss is {record['online_train_loss']}"
                         f" at step {step}.")
      records.append(record)
    return records, ""

  def _write_summary(self, status, step, last_eval, last_train, seconds,
                     first_step_seconds, message=""):
    summary = {
        "name": self.config.name, "preset": self.config.preset,
        "row": self.config.row, "column": self.config.column,
        "seed": self.config.seed, "status": status, "message": message,
        "steps": step, "total_steps": self.num_steps,
        "epochs": step / self.steps_per_epoch,
        "steps_per_epoch": self.steps_per_epoch,
        "main_metric": self.task.main_metric,
        "higher_is_better": self.task.higher_is_better,
        "wall_seconds": seconds, "first_step_seconds": first_step_seconds,
        "data_source": getattr(self.task, "data_source", ""),
        "code_version": code_version(),
        "machine": machine(),
        "finished_at": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint_problems": self.checkpoint_problems,
        "final_online_train_loss": last_train.get("online_train_loss"),
        **{f"final_{k}": v for k, v in last_eval.items()},
    }
    if self.is_main_process:
      checkpointing.write_atomically(self.run_dir / "summary.json",
                                     json.dumps(summary, indent=2))
    return summary


@functools.cache
def machine() -> str:
  """The CPU model and core count, and the jax version and backend.

  Runs of one study may come from different machines (one session at a time):
  a run's summary says which trained it, since floating-point results differ
  in the last bits from one CPU to another.
  """
  model = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return (f"{model}, {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{jax.default_backend()}")


@functools.cache
def code_version() -> str:
  """The git commit of this checkout (`-dirty` if modified), else the version.

  Cached: the first call (the first `Trainer` of a process) names the code
  the process loaded, even if the checkout changes while it runs.
  """
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
        capture_output=True, text=True, check=True,
        timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return f"extrap_optax {extrap_optax.__version__}"


def _has_extrapolation_state(tx: optax.GradientTransformation) -> bool:
  """Whether `tx` keeps a shared point apart from the parameters."""
  state = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((1,), jnp.float32)})
  return optax.tree_utils.tree_get(state, "ExtrapolationState") is not None


def make_eval_point(averages_points: bool):
  """The evaluation point of stacked trees, as (parameters, model state).

  The parameters are the shared point y (`extrap_optax.evaluation_params`;
  worker 0's copy, or the workers' mean for post-local SGD) and the model
  state (BatchNorm statistics) is averaged over workers (`Workers.mean`).
  """

  def eval_point(params, opt_state, model_state):
    shared = extrap_optax.evaluation_params(params, opt_state)
    if averages_points:
      # Between averaging rounds of post-local SGD the workers' models differ;
      # their average is the model the next round would produce.
      shared = extrap_optax.Workers.mean(shared)
    else:
      shared = jax.tree.map(lambda x: x[0], shared)
    return shared, extrap_optax.Workers.mean(model_state)

  return eval_point
