"""Presets: the runs behind each table and figure of the paper, at three scales.

`get_preset(name, scale)` returns a `Preset`: named run configurations (one per
table cell or figure curve) and the seeds to repeat them with.

Scales:
- `paper`: the published setting (CIFAR-10/100 with K=32 x B=256 for 300
  epochs, WikiText-2 with K=24/48 x B=64, Multi30k with K=20/80, ...).
- `small`: the same experiment shrunk to finish on a 2-core CPU with 8 fake
  devices in minutes: the offline CIFAR-10 JPEG subset (10,000 images),
  K=8 x B=128 (global batch 1,024, about 10% of the data as in the paper's
  16%), one worker per device; WikiText-2 and Multi30k slices with smaller
  models. Learning rates are the paper's grid values, not re-tuned.
- `toy`: a few steps on synthetic data with tiny models (tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from experiments import methods
from experiments.configs import base
from experiments.configs import overrides

SCALES = ("paper", "small", "toy")



def _method(method: methods.Method, **fields) -> dict[str, Any]:
  """The overrides that make a run use `method` with its `fields`."""
  return {overrides.METHOD_KEY: method.name,
          **{f"optimizer.{key}": value for key, value in fields.items()}}


# Methods as table columns / figure curves: (run name, overrides).
MINIBATCH = (methods.MINIBATCH_SGD.name, _method(methods.MINIBATCH_SGD))
EXTRAP = (methods.EXTRAP_SGD.name, _method(methods.EXTRAP_SGD))
SMOOTHOUT = ("smoothout", _method(methods.NOISE_EXTRAP_SGD, noise="smoothout"))
UNIFORM = ("extrap_uniform_noise",
           _method(methods.NOISE_EXTRAP_SGD, noise="uniform"))
GRADIENT = ("extrap_stochastic_noise",
            _method(methods.NOISE_EXTRAP_SGD, noise="gradient"))
POST_LOCAL = (methods.POST_LOCAL_SGD.name, _method(methods.POST_LOCAL_SGD))
POST_LOCAL_EXTRAP = ("extrap_sgd_post_local",
                     _method(methods.POST_LOCAL_EXTRAP_SGD))
NO_LARS = {"optimizer.trust_coefficient": 0.0}


@dataclasses.dataclass(frozen=True)
class Preset:
  """The runs of one table or figure.

  Attributes:
    name: the preset name, e.g. "table1".
    scale: "paper", "small" or "toy".
    description: what the paper shows there.
    runs: run name -> configuration; each has `preset`, `row` and `column`
      fields for the report.
    seeds: each run is repeated with these seeds (the paper averages three).
    see_also: where a fuller version of this experiment is reported.
    baseline: the run the others are compared against (its final loss is
      their target); "": none, the highest final loss is the target.
    claimed_speedup: how many times fewer steps than the baseline the paper
      reports the extrapolated method needs to reach mini-batch SGD's loss
      ("at least 2x" for Figure 1, §5); the comparison says whether the runs
      show it. None: the paper makes no such claim there.
    noise_reference: a study's runs directory (relative to the repository)
      whose comparison seeds ran this preset's setting: the comparison says
      whether the one-seed difference lies within their seed-to-seed spread
      (`experiments.noise_reference`). "": none.
  """
  name: str
  scale: str
  description: str
  runs: dict[str, ml_collections.ConfigDict]
  seeds: tuple[int, ...]
  see_also: str = ""
  baseline: str = ""
  claimed_speedup: float | None = None
  noise_reference: str = ""

  @property
  def reference(self) -> tuple[str, str] | None:
    """The baseline as (run name, its method's label); None without one."""
    if not self.baseline:
      return None
    method = methods.get(self.runs[self.baseline].optimizer.method)
    return self.baseline, method.label


def cifar(scale: str, model: str = "resnet20",
          dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """ResNet-20 / VGG-11 on CIFAR with the paper's training scheme, scaled."""
  config = base.get_config()
  config.task = "classification"
  config.data.dataset = dataset
  config.model.name = model
  if scale == "small":
    # 10,000 training images, the first 1,000 of each class (from the full
    # JPEG set, exactly the JPEG subset); 2,000 test images keep each
    # evaluation to a few seconds.
    config.data.train_size = 10_000
    config.data.eval_size = 2000
    config.workers.num_workers = 8
    config.workers.local_batch_size = 128
    config.num_epochs = 30.0
    config.schedule.warmup_epochs = 2.0
    config.num_evals = 6
    config.checkpoint_every_steps = 50
  elif scale == "toy":
    config.data.source = "synthetic"
    config.data.train_size = 256
    config.data.eval_size = 32
    config.data.eval_batch_size = 32
    config.workers.num_workers = 8
    config.workers.local_batch_size = 4
    config.num_steps = 2
    config.schedule.warmup_epochs = 0.0
    config.schedule.decay_fractions = (0.5,)
    config.num_evals = 1
    config.log_every_steps = 1
    config.checkpoint_every_steps = 1
    config.progress_bar = False
    if model == "resnet20":
      config.model.kwargs.depth = 8
    else:
      config.model.kwargs.config = (8, "M", 8, "M", "M", "M", "M")
  return config


def cifar_cpu_proxy() -> ml_collections.ConfigDict:
  """Figure 1's large-batch setting at the scale of a 2-core CPU.

  The paper's Figure 1 trains on 50,000 images with a global batch of 8,192
  (16% of the data a step, 6 steps an epoch) for 300 epochs, constant rate
  after 5 warm-up epochs, LARS. On a 2-core CPU (about 210 ResNet-20 images/s)
  that is 2.9 days a run. The proxy keeps what makes the setting large-batch,
  the batch as a fraction of the data: 10,000 training images, the first
  1,000 of each class (offline exactly the JPEG subset; with internet, of the
  original archive through tfds), K=8 workers x B=125 (global 1,000, 10% a
  step, 10 steps an epoch), warm-up 2 epochs, LARS 0.02. On all 50,000 images the same minutes buy a
  few epochs at 2% a step: a small-batch setting, not the paper's.

  Measured: the shared point's training loss on a fixed 5,000-image training
  subset every epoch, test accuracy on all 10,000 test images, and the
  per-tensor extrapolation ratio at every step.
  """
  config = cifar("small")
  config.row = "ResNet-20 on CIFAR-10 (10k images), K=8 x B=125"
  config.data.eval_size = 0
  config.data.train_eval_size = 5000
  config.workers.num_workers = 8
  config.workers.local_batch_size = 125
  config.schedule.name = "constant"
  config.schedule.decay_fractions = ()
  config.schedule.warmup_epochs = 2.0
  config.train_eval_every_steps = 10
  config.log_every_steps = 5
  config.optimizer.trust_coefficient = 0.02
  return config


def wikitext2(scale: str) -> ml_collections.ConfigDict:
  """2-layer LSTM on WikiText-2 (App. C), constant rate after warmup."""
  config = base.get_config()
  config.task = "language_model"
  config.data.dataset = "wikitext2"
  config.data.eval_batch_size = 10
  config.model.name = "lstm"
  config.workers.num_workers = 24
  config.workers.local_batch_size = 64
  config.optimizer.weight_decay = 0.0
  config.optimizer.trust_coefficient = 0.0
  config.optimizer.grad_clip_norm = 0.4
  # Not given by the paper: the middle of its grid (tune with `sweep`).
  config.optimizer.base_learning_rate = 0.1
  config.schedule.name = "constant"
  config.schedule.decay_fractions = ()
  if scale == "small":
    # 300k training tokens, 20k validation tokens.
    config.data.train_size = 300_000
    config.data.eval_size = 20_000
    config.workers.num_workers = 8
    config.workers.local_batch_size = 8
    config.num_epochs = 3.0
    config.schedule.warmup_epochs = 0.5
    config.num_evals = 6
    config.checkpoint_every_steps = 200
  elif scale == "toy":
    config.data.source = "synthetic"
    config.data.train_size = 2048
    config.data.eval_size = 256
    config.data.bptt = 8
    config.data.eval_batch_size = 4
    config.model.kwargs.hidden_size = 16
    config.workers.num_workers = 4
    config.workers.local_batch_size = 2
    config.num_steps = 2
    config.schedule.warmup_epochs = 0.0
    config.num_evals = 1
    config.log_every_steps = 1
    config.checkpoint_every_steps = 1
    config.progress_bar = False
  return config


def multi30k(scale: str) -> ml_collections.ConfigDict:
  """Half-width pre-LN Transformer on Multi30k en-de with (EXTRAP-)Adam."""
  config = base.get_config()
  config.task = "translation"
  config.data.dataset = "multi30k"
  config.data.eval_batch_size = 100
  # Decode the test set for BLEU at every evaluation; False: at the last one
  # only (decoding costs several validation losses). Only translation
  # configurations have this field.
  config.data.bleu_at_every_eval = True
  config.model.name = "transformer"
  config.workers.num_workers = 20
  config.workers.local_batch_size = 64
  config.optimizer = methods.optimizer_config(methods.ADAM.name)
  config.schedule.name = "inverse_sqrt"
  config.num_epochs = 100.0
  if scale == "small":
    config.data.train_size = 4000
    config.data.eval_size = 200
    config.data.max_decode_len = 40
    config.model.kwargs.update(dict(
        d_model=128, d_ff=512, num_heads=4, num_encoder_layers=2,
        num_decoder_layers=2))
    config.workers.num_workers = 8
    config.workers.local_batch_size = 16
    config.num_epochs = 8.0
    # The warmup is scaled by the global batch (4000 steps at 64 pairs);
    # a 250-step run needs a shorter reference.
    config.schedule.reference_warmup_steps = 400
    config.num_evals = 4
    config.checkpoint_every_steps = 100
  elif scale == "toy":
    config.data.source = "synthetic"
    config.data.train_size = 64
    config.data.eval_size = 8
    config.data.eval_batch_size = 8
    config.data.max_decode_len = 8
    config.model.kwargs.update(dict(
        d_model=16, d_ff=32, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, max_len=32))
    config.workers.num_workers = 4
    config.workers.local_batch_size = 4
    config.num_steps = 2
    config.schedule.reference_warmup_steps = 4
    config.num_evals = 1
    config.log_every_steps = 1
    config.checkpoint_every_steps = 1
    config.progress_bar = False
  return config


def _run(config: ml_collections.ConfigDict, preset: str, name: str, row: str,
         column: str, changes: dict[str, Any]
         ) -> tuple[str, ml_collections.ConfigDict]:
  config = overrides.apply(config, changes)
  config.name = name
  config.preset = preset
  config.row = row
  config.column = column
  return name, config


def _with_sync_period(changes: dict[str, Any], period: int) -> dict[str, Any]:
  """`changes` with post-local SGD's H = `period` if the method has an H."""
  method = methods.get(changes[overrides.METHOD_KEY])
  if "sync_period" in method.fields:
    return {**changes, "optimizer.sync_period": period}
  return changes


def _seeds(scale: str) -> tuple[int, ...]:
  return (0, 1, 2) if scale == "paper" else (0,)


# The README's main job (`fig1` at `small` scale): the study's CPU proxy
# (`cifar_cpu_proxy`), short enough for both methods to finish in about 15
# minutes on an idle 2-core CPU, with the values the study's tuning chose
# (results/reproduction/: mini-batch SGD's best γ0 of App. C.1's grid, and
# EXTRAP-SGD's best c of γ̂ = c·γ/K at that γ0).
MAIN_JOB_EPOCHS = 6.0
MAIN_JOB_LEARNING_RATE = 0.025
MAIN_JOB_EXTRAPOLATION_SCALE = 4.0


def fig1(scale: str) -> Preset:
  """Figure 1: ResNet-20 CIFAR-10 learning curves without decay + smoothness."""
  if scale == "small":
    config = cifar_cpu_proxy()
    config.num_epochs = MAIN_JOB_EPOCHS
    config.optimizer.base_learning_rate = MAIN_JOB_LEARNING_RATE
    config.optimizer.extrapolation_scale = MAIN_JOB_EXTRAPOLATION_SCALE
    config.num_evals = 1
    # The y-loss on 2,000 training images (the study uses 5,000), so that
    # evaluation takes under half as long.
    config.data.train_eval_size = 2000
    config.probe_every_steps = 30
    config.checkpoint_every_steps = 30
    curves = (MINIBATCH, EXTRAP)
  else:
    config = cifar(scale)
    config.schedule.name = "constant"
    config.schedule.decay_fractions = ()
    if scale == "paper":
      # Every epoch (6 steps of 8,192), on 5,000 training images.
      config.data.train_eval_size = 5000
      config.train_eval_every_steps = 6
      config.probe_every_steps = 20
      curves = (MINIBATCH, SMOOTHOUT, UNIFORM, GRADIENT, EXTRAP)
    else:
      config.data.train_eval_size = 32
      config.train_eval_every_steps = 1
      config.probe_every_steps = 1
      curves = (MINIBATCH, EXTRAP)
  runs = dict(_run(config, "fig1", name, config.row or "ResNet-20 on CIFAR-10",
                   name, changes) for name, changes in curves)
  return Preset("fig1", scale, "Figure 1: training loss of the shared point "
                "without learning-rate decay and the smoothness L of each step "
                "(ResNet-20, CIFAR-10, K=32 x B=256).", runs, _seeds(scale),
                see_also=("for the tuned five-seed study of this setting, with "
                          "intervals, see results/reproduction/README.md"
                          if scale == "small" else ""),
                baseline=MINIBATCH[0], claimed_speedup=2.0,
                noise_reference=("results/reproduction/fig1_cpu/runs"
                                 if scale == "small" else ""))


def table1(scale: str) -> Preset:
  """Table 1: all methods, ResNet-20 and VGG-11 on CIFAR-10, with decay."""
  columns = (
      (f"{MINIBATCH[0]}_no_lars", {**MINIBATCH[1], **NO_LARS},
       "mini-batch SGD (w/o LARS)"),
      (f"{EXTRAP[0]}_no_lars", {**EXTRAP[1], **NO_LARS},
       "EXTRAP-SGD (w/o LARS)"),
      (MINIBATCH[0], MINIBATCH[1], "mini-batch SGD"),
      (SMOOTHOUT[0], SMOOTHOUT[1], "SmoothOut"),
      (UNIFORM[0], UNIFORM[1], "extrapolated SGD, uniform noise"),
      (GRADIENT[0], GRADIENT[1], "extrapolated SGD, stochastic noise"),
      (EXTRAP[0], EXTRAP[1], "EXTRAP-SGD"),
  )
  runs = {}
  for model, row in (("resnet20", "ResNet-20 on CIFAR-10"),
                     ("vgg11", "VGG-11 on CIFAR-10")):
    config = cifar(scale, model)
    for name, opt, column in columns:
      key, run = _run(config, "table1", f"{model}_{name}", row, column, opt)
      runs[key] = run
  return Preset("table1", scale, "Table 1: top-1 test accuracy of every "
                "method, K=32 x B=256 on CIFAR-10, learning rate decayed at "
                "50% and 75%.", runs, _seeds(scale))


def table2(scale: str) -> Preset:
  """Table 2: post-local SGD with and without EXTRAP-SGD, CIFAR-10/100."""
  columns = ((MINIBATCH, "mini-batch SGD"),
             (POST_LOCAL, "mini-batch SGD (with post-local SGD)"),
             (EXTRAP, "EXTRAP-SGD"),
             (POST_LOCAL_EXTRAP, "EXTRAP-SGD (with post-local SGD)"))
  runs = {}
  for dataset, row in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
    config = cifar(scale, dataset=dataset)
    for (name, opt), column in columns:
      key, run = _run(config, "table2", f"{dataset}_{name}", row, column,
                      _with_sync_period(opt, 8))
      if dataset == "cifar100" and scale != "toy":
        # No offline CIFAR-100 copy exists: it always comes through tfds.
        run.data.source = "tfds"
      runs[key] = run
  return Preset("table2", scale, "Table 2: ResNet-20 with post-local SGD "
                "(H=8), K=32 x B=256, CIFAR-10 and CIFAR-100.", runs,
                _seeds(scale))


def table3(scale: str) -> Preset:
  """Table 3: the same global batch cut into different (B, K)."""
  shapes = {"paper": ((512, 16), (256, 32), (128, 64), (64, 128)),
            "small": ((256, 4), (128, 8), (64, 16), (32, 32)),
            "toy": ((8, 4), (4, 8), (2, 16))}[scale]
  runs = {}
  for batch, workers in shapes:
    config = cifar(scale)
    config.workers.num_workers = workers
    config.workers.local_batch_size = batch
    for (name, opt), row in ((MINIBATCH, "Mini-batch SGD"),
                             (EXTRAP, "EXTRAP-SGD")):
      key, run = _run(config, "table3", f"{name}_b{batch}_k{workers}", row,
                      f"(B = {batch}, K = {workers})", opt)
      runs[key] = run
  return Preset("table3", scale, "Table 3: ResNet-20 on CIFAR-10, global "
                "batch fixed, local batch B and workers K varied.", runs,
                _seeds(scale))


def fig2(scale: str) -> Preset:
  """Figure 2: LSTM on WikiText-2, K=24 and K=48, perplexity."""
  worker_counts = {"paper": (24, 48), "small": (4, 8), "toy": (2, 4)}[scale]
  runs = {}
  for workers in worker_counts:
    config = wikitext2(scale)
    config.workers.num_workers = workers
    for name, opt in (MINIBATCH, EXTRAP):
      key, run = _run(config, "fig2", f"{name}_k{workers}", f"K = {workers}",
                      name, opt)
      runs[key] = run
  return Preset("fig2", scale, "Figure 2: validation perplexity of a 2-layer "
                "LSTM on WikiText-2, B=64, K=24 and 48, constant rate after "
                "warmup.", runs, _seeds(scale))


def fig3(scale: str) -> Preset:
  """Figure 3: Transformer on Multi30k, Adam vs EXTRAP-ADAM, K=20 and 80."""
  worker_counts = {"paper": (20, 80), "small": (2, 8), "toy": (2, 4)}[scale]
  runs = {}
  for workers in worker_counts:
    config = multi30k(scale)
    config.workers.num_workers = workers
    for method in (methods.ADAM, methods.EXTRAP_ADAM):
      key, run = _run(config, "fig3", f"{method.name}_k{workers}",
                      f"K = {workers}", method.name, _method(method))
      runs[key] = run
  return Preset("fig3", scale, "Figure 3: validation loss and BLEU of the "
                "Transformer on Multi30k with Adam and EXTRAP-ADAM, K=20 and "
                "80.", runs, _seeds(scale))


def fig4(scale: str) -> Preset:
  """Figure 4: K=64 x B=256 with post-local SGD (H=4) at several epoch budgets."""
  budgets = {"paper": (200.0, 300.0, 400.0), "small": (20.0, 40.0),
             "toy": (1.0,)}[scale]
  rows = ((MINIBATCH, "mini-batch SGD"),
          (POST_LOCAL, "mini-batch SGD (with post-local SGD)"),
          (EXTRAP, "EXTRAP-SGD"),
          (POST_LOCAL_EXTRAP, "EXTRAP-SGD (with post-local SGD)"))
  runs = {}
  for epochs in budgets:
    config = cifar(scale)
    if scale == "paper":
      config.workers.num_workers = 64
    elif scale == "small":
      config.workers.num_workers = 16
    config.num_epochs = epochs
    for (name, opt), row in rows:
      key, run = _run(config, "fig4", f"{name}_e{epochs:g}", row,
                      f"{epochs:g} epochs", _with_sync_period(opt, 4))
      runs[key] = run
  return Preset("fig4", scale, "Figure 4: ResNet-20 on CIFAR-10 with K=64 x "
                "B=256 (a third of the data per step), post-local SGD with "
                "H=4, several epoch budgets.", runs, _seeds(scale))


PRESETS: dict[str, Callable[[str], Preset]] = {
    "fig1": fig1, "fig2": fig2, "fig3": fig3, "fig4": fig4,
    "table1": table1, "table2": table2, "table3": table3,
}


def get_preset(name: str, scale: str = "small") -> Preset:
  """The preset `name` ("fig1".."fig4", "table1".."table3") at `scale`."""
  if name not in PRESETS:
    raise ValueError(f"Unknown preset {name!r}; choose one of "
                     f"{', '.join(PRESETS)}.")
  if scale not in SCALES:
    raise ValueError(f"Unknown scale {scale!r}; choose one of "
                     f"{', '.join(SCALES)}.")
  return PRESETS[name](scale)
