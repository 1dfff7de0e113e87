"""The default run configuration: every field the trainer reads, with the paper's values.

A run is one `ml_collections.ConfigDict`. Presets (`presets.py`) copy this
default and change what their experiment changes; the command line changes
any field with `--set dotted.key=value` (`experiments.main`).

Conventions:
- `optimizer.base_learning_rate` is the *unscaled* rate γ0 of one worker's
  batch; the schedule scales it by K·B/B_ref (Goyal et al., 2017).
- `optimizer.trust_coefficient = 0` means no LARS.
- `optimizer.extrapolation_scale` is c in γ̂_t = c·γ_t/K (App. C.1), or in
  γ̂_t = c·(γ̃/K)·γ_t/γ_peak with `optimizer.extrapolation_scaling =
  "trust_ratio"`.
- Intervals (`*_every_steps`) of 0 mean "never"; evaluation and checkpoints
  also happen at the last step.
"""

from __future__ import annotations

import ml_collections

TASKS = ("classification", "language_model", "translation")
METHODS = ("minibatch_sgd", "extrap_sgd", "noise_extrap_sgd", "post_local_sgd",
           "post_local_extrap_sgd", "adam", "extrap_adam")
NOISES = ("uniform", "gaussian", "smoothout", "gradient")
EXTRAPOLATION_SCALINGS = ("none", "trust_ratio")
SCHEDULES = ("goyal", "constant", "inverse_sqrt")
DATA_SOURCES = ("auto", "tfds", "jpeg", "local", "jpeg_full", "jpeg_subset",
                "synthetic")


def get_config() -> ml_collections.ConfigDict:
  """ResNet-20 on CIFAR-10, K=32 x B=256, 300 epochs, EXTRAP-SGD with LARS."""
  config = ml_collections.ConfigDict()
  config.name = "extrap_sgd"
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

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.method = "extrap_sgd"
  config.optimizer.base_learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.trust_coefficient = 0.02
  config.optimizer.extrapolation_scale = 1.0
  # EXTRAP-SGD's past gradient (extrap_sgd, post_local_extrap_sgd).
  # "none": γ̂_t = c·γ_t/K on the raw past gradient (§3.1); "trust_ratio":
  # LARS-scaled past gradient with γ̂_t = c·(γ̃/K)·γ_t/γ_peak (App. C.1's
  # reading; follows the warm-up like the LARS step does). Needs LARS
  # (trust_coefficient > 0).
  config.optimizer.extrapolation_scaling = "none"
  config.optimizer.noise = "uniform"
  # Post-local SGD: t0 in epochs (negative: the first learning-rate decay), H.
  config.optimizer.local_start_epoch = -1.0
  config.optimizer.sync_period = 8
  # Adam / EXTRAP-ADAM: the paper's Transformer values (App. C), set here
  # because the library's defaults are optax's (b2=0.999, eps=1e-8).
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-9
  # Clip each worker's local gradient to this global norm (LSTM: 0.4); 0: off.
  config.optimizer.grad_clip_norm = 0.0

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
