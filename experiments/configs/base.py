"""The default run configuration: every field the trainer reads, with the paper's values.

A run is one `ml_collections.ConfigDict`. Presets (`presets.py`) copy this
default and change what their experiment changes; the command line changes
any field with `--set dotted.key=value` (`experiments.main`).

Conventions:
- `optimizer` holds the fields of its method only (`experiments.methods`).
- `optimizer.base_learning_rate` is the *unscaled* rate γ0 of one worker's
  batch; the schedule scales it by K·B/B_ref (Goyal et al., 2017).
- `optimizer.trust_coefficient = 0` means no LARS.
- `optimizer.extrapolation_scale` is c in γ̂_t = c·γ_t/K (App. C.1), or in
  γ̂_t = c·(γ̃/K)·γ_t/γ_peak with `optimizer.extrapolation_scaling =
  "trust_ratio"`.
- `optimizer.grad_clip_norm` clips each worker's local gradient to this global
  norm (LSTM: 0.4); 0 is off.
- Intervals (`*_every_steps`) of 0 mean "never"; evaluation and checkpoints
  also happen at the last step.
"""

from __future__ import annotations

import ml_collections

from experiments import methods

TASKS = ("classification", "language_model", "translation")
SCHEDULES = ("goyal", "constant", "inverse_sqrt")
DATA_SOURCES = ("auto", "tfds", "jpeg", "local", "jpeg_full", "jpeg_subset",
                "synthetic")


def get_config() -> ml_collections.ConfigDict:
  """ResNet-20 on CIFAR-10, K=32 x B=256, 300 epochs, EXTRAP-SGD with LARS."""
  config = ml_collections.ConfigDict()
  config.name = methods.EXTRAP_SGD.name
  # Where the run sits in the report: preset, table row and column (or curve).
  config.preset = ""
  config.row = ""
  config.column = ""
  config.task = "classification"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # cifar10 | cifar100 | wikitext2 | multi30k.
  config.data.dataset = "cifar10"
  # auto: CIFAR-10 from $EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg when present, else
  # tfds; text from $EXTRAP_OPTAX_DATA_DIR. tfds: original CIFAR pixels.
  # jpeg | local: the full JPEG set (cifar10_jpeg_full.npz) when present,
  # else the 10,000-image subset; jpeg_full | jpeg_subset force one (both
  # JPEG quality 75, not the original pixels). synthetic: random data.
  config.data.source = "auto"
  # Root of the local data; empty means $EXTRAP_OPTAX_DATA_DIR.
  config.data.data_dir = ""
  # Keep only the first N training examples / tokens / pairs (0: all).
  config.data.train_size = 0
  # Keep only the first N test examples / validation tokens / pairs (0: all).
  config.data.eval_size = 0
  # Classification: the shared point's training loss is measured on this many
  # training examples (a fixed subset, eval mode, no augmentation; 0: off).
  config.data.train_eval_size = 0
  config.data.augment = True
  config.data.eval_batch_size = 1000
  # Language modelling: BPTT length; evaluation batch columns.
  config.data.bptt = 35
  # Translation: evaluation decoding length and BLEU test subset. (Translation
  # configurations, `presets.multi30k`, also have `data.bleu_at_every_eval`.)
  config.data.max_decode_len = 64
  config.data.beam_size = 1
  # Synthetic data sizes (tests and toy runs).
  config.data.synthetic_vocab_size = 64

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet20"
  # Extra module attributes for `experiments.models.get_model`.
  config.model.kwargs = ml_collections.ConfigDict()

  config.workers = ml_collections.ConfigDict()
  config.workers.num_workers = 32
  config.workers.local_batch_size = 256
  config.workers.backend = "shard_map"

  # The method's own fields and the common ones (`experiments.methods`);
  # `configs.overrides.apply` with "optimizer.method" switches the method.
  config.optimizer = methods.optimizer_config(
      methods.EXTRAP_SGD.name, base_learning_rate=0.1)

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "goyal"
  config.schedule.warmup_epochs = 5.0
  config.schedule.decay_fractions = (0.5, 0.75)
  config.schedule.decay_factor = 0.1
  # Batch for which base_learning_rate was tuned (0: the local batch B).
  config.schedule.reference_batch_size = 0
  # inverse_sqrt: multiplier of the whole schedule; warmup at batch 64.
  config.schedule.scale = 1.0
  config.schedule.reference_warmup_steps = 4000

  config.num_epochs = 300.0
  # When positive, overrides num_epochs.
  config.num_steps = 0

  config.log_every_steps = 10
  config.eval_every_steps = 0
  # Evaluations per run when eval_every_steps is 0 (evenly spaced).
  config.num_evals = 30
  # Shared-point training loss every N steps (0: at the test evaluations).
  config.train_eval_every_steps = 0
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  # Smoothness probe of Figure 1(b) every N steps (0: off).
  config.probe_every_steps = 0
  config.probe_num_steps = 8
  config.probe_step_fraction = 0.3
  config.progress_bar = True
  return config
