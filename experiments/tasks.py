"""The three tasks behind one interface: data, model, per-worker loss, evaluation.

The trainer (`experiments.train`) is task-agnostic; a `Task` gives it

- `init(rng)`: one worker's parameters and model state (BatchNorm statistics,
  the LSTM's hidden state, or nothing);
- `loss(params, model_state, batch, rng, step)`: one worker's training loss on
  its local batch, with the new model state and extra metrics;
- `train_batch(step)`: the global step's (K, B, ...) batch, placed for
  `Workers.map`; a pure function of (seed, step), so a resumed run sees the
  same data as an uninterrupted one;
- `evaluate(params, model_state, final=...)`: test metrics at the shared
  point, with the model state averaged over workers; `final` is True at the
  run's last evaluation, where a task may add metrics too costly to measure
  at every one (translation's test BLEU with `data.bleu_at_every_eval=False`);
- classification also has `evaluate_train(params, model_state)`: the same
  point's loss on a fixed training subset (`data.train_eval_size` examples,
  eval mode, no augmentation), the training loss the methods are compared by.

Data sources (`config.data.source`): "auto" takes CIFAR-10 from
`$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg` when it exists, else tfds, and text from
`$EXTRAP_OPTAX_DATA_DIR`; "synthetic" makes random data of the same shapes
(tests and toy runs). In `cifar10-jpeg`, "auto", "jpeg" and "local" take the
full set (`cifar10_jpeg_full.npz`, 50,000 train images) when it is there, else
the subset (`cifar10_jpeg_subset.npz`, 10,000); "jpeg_full" and "jpeg_subset"
force one. Both are JPEG quality 75, not the original pixels; "tfds" has the
original ones. `Classification.data_source` says which source was used.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import extrap_optax
from experiments import models
from experiments.input_pipeline import cifar
from experiments.input_pipeline import common
from experiments.input_pipeline import multi30k
from experiments.input_pipeline import wikitext2

Batch = Any
Metrics = dict[str, jax.Array]


class Task(Protocol):
  """What the trainer needs from a task (see the module docstring)."""

  steps_per_epoch: int
  # Examples (images, tokens, sentence pairs) per global step, for throughput.
  examples_per_step: int
  throughput_unit: str
  # The metric the report tabulates, and whether higher is better.
  main_metric: str
  higher_is_better: bool

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    ...

  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics]]:
    ...

  def train_batch(self, step: int) -> Batch:
    ...

  def evaluate(self, params: Any, model_state: Any, *,
               final: bool = True) -> dict[str, float]:
    ...


def data_dir(config: ml_collections.ConfigDict) -> pathlib.Path | None:
  """The local data root: `config.data.data_dir`, else $EXTRAP_OPTAX_DATA_DIR."""
  value = config.data.data_dir or os.environ.get(common.DATA_DIR_ENV, "")
  return pathlib.Path(value) if value else None


def local_worker_rows(workers: extrap_optax.Workers) -> np.ndarray:
  """The workers (rows of a stacked batch) whose devices this process owns."""
  process = jax.process_index()
  return np.array([k for k in range(workers.num_workers)
                   if workers.devices[k // workers.workers_per_device]
                   .process_index == process])


def place(workers: extrap_optax.Workers, stacked: Any) -> Any:
  """Places a host (K, ...) batch; multi-host, each process gives its own rows."""
  if jax.process_count() == 1:
    return workers.put(stacked)
  rows = local_worker_rows(workers)
  return workers.put_process_local(jax.tree.map(lambda x: x[rows], stacked))


def _local_eval_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), ("batch",))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


# The concrete image sources (`Classification._resolve_source`), as recorded
# in `Classification.data_source`.
_CIFAR_SOURCE_NAMES = {
    "synthetic": "synthetic",
    "tfds": "tfds CifarBinary (original pixels)",
    "jpeg_full": f"{cifar.JPEG_FULL_FILE.removesuffix('.npz')} "
                 "(JPEG quality 75)",
    "jpeg_subset": f"{cifar.JPEG_FILE.removesuffix('.npz')} "
                   "(JPEG quality 75, 1,000 train images per class)",
}


class Classification:
  """CIFAR-10/100 with ResNet-20 or VGG-11; top-1 accuracy on the test set."""

  throughput_unit = "img/s"
  main_metric = "test_accuracy"
  higher_is_better = True

  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    self.config = config
    # Which data was used, e.g. "cifar10_jpeg_full (JPEG quality 75)".
    self.data_source = _CIFAR_SOURCE_NAMES[self._resolve_source(config)]
    data = self._load(config)
    train_images, train_labels = class_balanced_prefix(
        data.train_images, data.train_labels, config.data.train_size)
    self.test_images, self.test_labels = _subset(
        data.test_images, data.test_labels, config.data.eval_size)
    # The same subset for every run on the same data, whatever the seed.
    self.train_eval_images, self.train_eval_labels = _subset(
        train_images, train_labels, config.data.train_eval_size)
    # The subset keeps the source's order, which may be sorted by class; the
    # batch-statistics loss cuts it into local batches in this fixed random
    # order instead, so that every batch mixes the classes as in training.
    self.train_eval_order = np.random.default_rng(1).permutation(
        len(self.train_eval_labels))
    self.mean, self.std = data.mean, data.std
    sharding = (workers.sharding if isinstance(workers.sharding, NamedSharding)
                else None)
    self.pipeline = cifar.DeviceCifar(
        train_images, train_labels, workers.num_workers,
        config.workers.local_batch_size, config.seed, mean=data.mean,
        std=data.std, augment_images=config.data.augment, sharding=sharding)
    self.steps_per_epoch = self.pipeline.steps_per_epoch
    self.examples_per_step = (workers.num_workers
                              * config.workers.local_batch_size)
    self.model = _image_model(config.model.name, num_classes=data.num_classes,
                              **config.model.kwargs.to_dict())
    self.eval_mesh = _local_eval_mesh()
    self.eval_batch_size = _round_up(config.data.eval_batch_size,
                                     len(jax.local_devices()))
    self._eval_step = jax.jit(self._eval_step_fn)
    self._train_mode_step = jax.jit(self._train_mode_step_fn)

  @staticmethod
  def _resolve_source(config: ml_collections.ConfigDict) -> str:
    """`config.data.source` made concrete: a key of `_CIFAR_SOURCE_NAMES`.

    "auto" is the JPEG data when `<root>/cifar10-jpeg` exists (CIFAR-10
    only), else "tfds"; "auto", "jpeg" and "local" are "jpeg_full" when
    `<root>/cifar10-jpeg/cifar10_jpeg_full.npz` exists, else "jpeg_subset".
    """
    source, dataset = config.data.source, config.data.dataset
    if source in ("synthetic", "tfds"):
      return source
    root = data_dir(config)
    jpeg_dir = None if root is None else root / cifar.JPEG_SUBDIR
    if source == "auto":
      if dataset != "cifar10" or jpeg_dir is None or not jpeg_dir.is_dir():
        return "tfds"
      source = "jpeg"
    if source not in ("jpeg", "local", "jpeg_full", "jpeg_subset"):
      raise ValueError(f"Unknown data.source {source!r} for {dataset}.")
    if dataset != "cifar10":
      raise ValueError(f"data.source={source!r} only has CIFAR-10; use "
                       f"data.source='tfds' for {dataset}.")
    if source in ("jpeg", "local"):
      has_full = (jpeg_dir is not None
                  and (jpeg_dir / cifar.JPEG_FULL_FILE).is_file())
      source = "jpeg_full" if has_full else "jpeg_subset"
    return source

  @staticmethod
  def _load(config: ml_collections.ConfigDict) -> cifar.CifarData:
    source = Classification._resolve_source(config)
    if source == "synthetic":
      return _synthetic_cifar(config)
    if source == "jpeg_full":
      return cifar.load_cifar10_jpeg_full(data_dir(config))
    if source == "jpeg_subset":
      return cifar.load_cifar10_jpeg_subset(data_dir(config))
    return cifar.load_cifar_tfds(config.data.dataset)

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    variables = self.model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
    params = variables.pop("params")
    return params, dict(variables)

  def loss(self, params, model_state, batch, rng, step):
    del rng, step  # No dropout; augmentation is keyed in the pipeline.
    images, labels = batch
    logits, new_state = self.model.apply(
        {"params": params, **model_state}, images, train=True,
        mutable=list(model_state))
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (dict(new_state), {"online_train_accuracy": accuracy})

  def train_batch(self, step: int) -> Batch:
    return self.pipeline.batch(step)

  def _eval_step_fn(self, params, model_state, images, labels, mask):
    logits = self.model.apply({"params": params, **model_state}, images,
                              train=False).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(losses * mask), jnp.sum(correct * mask)

  def _loss_and_accuracy(self, params, model_state, images,
                         labels) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode, without augmentation."""
    sharding = NamedSharding(self.eval_mesh, P("batch"))
    total_loss = total_correct = 0.0
    for batch in cifar.eval_batches(images, labels, self.eval_batch_size,
                                    self.mean, self.std):
      loss, correct = self._eval_step(params, model_state,
                                      *jax.device_put(batch, sharding))
      total_loss += float(loss)
      total_correct += float(correct)
    return total_loss / len(labels), total_correct / len(labels)

  def _train_mode_step_fn(self, params, model_state, images, labels, mask):
    """Summed loss of (chunks, B, ...) images, BatchNorm on each chunk's own
    statistics (the running statistics are not updated)."""

    def chunk_loss(chunk_images, chunk_labels):
      logits, _ = self.model.apply(
          {"params": params, **model_state},
          cifar.normalize(chunk_images, self.mean, self.std), train=True,
          mutable=list(model_state))
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), chunk_labels))

    return jnp.sum(jax.vmap(chunk_loss)(images, labels) * mask)

  def _train_mode_loss(self, params, model_state, images, labels) -> float:
    """Mean loss with BatchNorm in training mode, on local-batch-sized chunks.

    The objective the workers' gradients estimate (BatchNorm normalising by
    the statistics of B examples), without augmentation; unlike the eval-mode
    loss it does not depend on how far the running statistics trail the
    weights. The last `len(labels) mod B` examples are left out.
    """
    local_batch = self.config.workers.local_batch_size
    num_chunks = len(labels) // local_batch
    group = len(self.eval_mesh.devices.flat)
    sharding = NamedSharding(self.eval_mesh, P("batch"))
    total = 0.0
    for start in range(0, num_chunks, group):
      count = min(group, num_chunks - start)
      rows = slice(start * local_batch, (start + count) * local_batch)
      chunk_images = np.zeros((group, local_batch) + images.shape[1:],
                              np.uint8)
      chunk_labels = np.zeros((group, local_batch), np.int32)
      chunk_images[:count] = images[rows].reshape(
          (count, local_batch) + images.shape[1:])
      chunk_labels[:count] = labels[rows].reshape(count, local_batch)
      mask = np.arange(group) < count
      total += float(self._train_mode_step(
          params, model_state,
          *jax.device_put((chunk_images, chunk_labels, mask), sharding)))
    return total / (num_chunks * local_batch)

  def evaluate(self, params, model_state, *,
               final: bool = True) -> dict[str, float]:
    del final  # Every evaluation measures everything.
    loss, accuracy = self._loss_and_accuracy(
        params, model_state, self.test_images, self.test_labels)
    return {"test_loss": loss, "test_accuracy": accuracy}

  def evaluate_train(self, params, model_state) -> dict[str, float]:
    """Losses and accuracy of y on the fixed training subset.

    `shared_point_train_loss` in eval mode (the running BatchNorm statistics,
    what the model is evaluated and shipped with), and
    `shared_point_train_loss_batch_stats` with BatchNorm on the statistics of
    each local-batch-sized chunk (`_train_mode_loss`).
    """
    loss, accuracy = self._loss_and_accuracy(
        params, model_state, self.train_eval_images, self.train_eval_labels)
    return {"shared_point_train_loss": loss,
            "shared_point_train_accuracy": accuracy,
            "shared_point_train_loss_batch_stats": self._train_mode_loss(
                params, model_state,
                self.train_eval_images[self.train_eval_order],
                self.train_eval_labels[self.train_eval_order])}


def class_balanced_prefix(images: np.ndarray, labels: np.ndarray,
                          size: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `size / C` examples of each of the C classes, in source order.

  A training subset that is the same whatever the seed and balanced over
  classes (the first `size mod C` classes get one more). On the full CIFAR-10
  JPEG set, `size=10000` is exactly the 10,000-image JPEG subset.

  Args:
    images: (N, ...) examples.
    labels: (N,) int class labels in [0, C).
    size: how many to keep; 0 (or at least N) keeps all.

  Returns:
    `(images, labels)` of the kept examples, in their original order.
  """
  if not size or size >= len(labels):
    return images, labels
  classes = int(labels.max()) + 1
  quota = np.full(classes, size // classes)
  quota[:size % classes] += 1
  rank = np.zeros(len(labels), np.int64)
  for c in range(classes):
    members = np.nonzero(labels == c)[0]
    rank[members] = np.arange(len(members))
  rows = np.nonzero(rank < quota[labels])[0]
  return images[rows], labels[rows]


def _subset(images: np.ndarray, labels: np.ndarray,
            size: int) -> tuple[np.ndarray, np.ndarray]:
  """`size` examples drawn by a fixed permutation (all of them for size 0).

  Not a leading slice: the offline CIFAR arrays are sorted by class, so their
  first 2,000 test images are airplanes and automobiles only.
  """
  if not size or size >= len(labels):
    return images, labels
  rows = np.sort(np.random.default_rng(0).permutation(len(labels))[:size])
  return images[rows], labels[rows]


def _image_model(name: str, **kwargs: Any) -> Any:
  # `get_model("resnet20")` fixes the depth; toy runs shrink it.
  if name == "resnet20" and "depth" in kwargs:
    return models.ResNet(**kwargs)
  return models.get_model(name, **kwargs)


def _synthetic_cifar(config: ml_collections.ConfigDict) -> cifar.CifarData:
  """Random images whose labels a model can learn (a class-dependent tint)."""
  num_classes = cifar.NUM_CLASSES[config.data.dataset]
  rng = np.random.default_rng(1234)
  train_size = config.data.train_size or 256
  eval_size = config.data.eval_size or 64

  def make(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    tint = (labels[:, None] * 37 % 256).astype(np.float64)
    images = rng.integers(0, 128, (n, 32, 32, 3)) + tint[:, :, None, None] / 2
    return images.astype(np.uint8), labels

  train_images, train_labels = make(train_size)
  test_images, test_labels = make(eval_size)
  mean, std = cifar.STATS[config.data.dataset]
  return cifar.CifarData(train_images, train_labels, test_images, test_labels,
                         num_classes, mean, std)


class LanguageModel:
  """WikiText-2 with the 2-layer LSTM; perplexity on the validation stream.

  The hidden state is per worker and carried between consecutive BPTT
  segments (detached); it restarts from zero at each epoch, so it is a function
  of the step and of the checkpointed state only.
  """

  throughput_unit = "tok/s"
  main_metric = "valid_perplexity"
  higher_is_better = False

  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    self.config = config
    self.workers = workers
    train, valid, vocab_size = self._load(config)
    local_batch = config.workers.local_batch_size
    self.batcher = wikitext2.LMBatcher(train, workers.num_workers, local_batch,
                                       config.data.bptt)
    self.steps_per_epoch = self.batcher.steps_per_epoch
    self.examples_per_step = (workers.num_workers * local_batch
                              * config.data.bptt)
    self.model = models.get_model("lstm", vocab_size=vocab_size,
                                  **config.model.kwargs.to_dict())
    self.local_batch = local_batch
    eval_columns = config.data.eval_batch_size
    length = len(valid) // eval_columns
    self.valid = valid[:length * eval_columns].reshape(eval_columns, length)
    self._eval_step = jax.jit(self._eval_step_fn)

  @staticmethod
  def _load(config) -> tuple[np.ndarray, np.ndarray, int]:
    if config.data.source == "synthetic":
      vocab = config.data.synthetic_vocab_size
      rng = np.random.default_rng(1234)
      # A noisy cycle through the vocabulary: learnable, not trivial.
      def stream(n):
        ids = np.arange(n) % vocab
        noise = rng.random(n) < 0.2
        return np.where(noise, rng.integers(0, vocab, n), ids).astype(np.int32)
      return (stream(config.data.train_size or 4096),
              stream(config.data.eval_size or 512), vocab)
    train, valid, _, vocab = wikitext2.load_wikitext2(data_dir(config))
    if config.data.train_size:
      train = train[:config.data.train_size]
    if config.data.eval_size:
      valid = valid[:config.data.eval_size]
    return train, valid, len(vocab)

  def init(self, rng):
    carry = self.model.initial_carry(self.local_batch)
    tokens = jnp.zeros((self.local_batch, self.config.data.bptt), jnp.int32)
    params = self.model.init(rng, tokens, carry, train=False)["params"]
    return params, {"carry": carry}

  def loss(self, params, model_state, batch, rng, step):
    inputs, targets = batch
    fresh = step % self.steps_per_epoch == 0
    carry = jax.tree.map(lambda c: jnp.where(fresh, jnp.zeros_like(c), c),
                         model_state["carry"])
    logits, carry = self.model.apply({"params": params}, inputs, carry,
                                     train=True, rngs={"dropout": rng})
    loss = models.language_model_loss(logits, targets)
    carry = jax.lax.stop_gradient(carry)
    return loss, ({"carry": carry},
                  {"online_train_perplexity": jnp.exp(loss)})

  def train_batch(self, step: int) -> Batch:
    return place(self.workers, self.batcher.batch(step))

  def _eval_step_fn(self, params, carry, inputs, targets):
    logits, carry = self.model.apply({"params": params}, inputs, carry,
                                     train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets)
    return jnp.sum(losses), carry

  def evaluate(self, params, model_state, *, final: bool = True):
    # Evaluation starts from a fresh hidden state; every one measures all.
    del model_state, final
    bptt = self.config.data.bptt
    carry = self.model.initial_carry(self.valid.shape[0])
    total, count = 0.0, 0
    for start in range(0, self.valid.shape[1] - 1, bptt):
      length = min(bptt, self.valid.shape[1] - 1 - start)
      inputs = self.valid[:, start:start + length]
      targets = self.valid[:, start + 1:start + 1 + length]
      loss, carry = self._eval_step(params, carry, inputs, targets)
      total += float(loss)
      count += targets.size
    mean = total / count
    return {"valid_loss": mean, "valid_perplexity": float(np.exp(mean))}


class Translation:
  """Multi30k en-de with the Transformer; validation loss and test BLEU.

  An evaluation measures `valid_loss` (token-level cross-entropy without
  label smoothing, teacher-forced) and `valid_perplexity` on the validation
  set, and `test_bleu` by decoding the test set, which costs several times
  more; with `data.bleu_at_every_eval=False` the test set is decoded at the
  run's last evaluation only.
  """

  throughput_unit = "pairs/s"
  main_metric = "test_bleu"
  higher_is_better = True
  label_smoothing = 0.1

  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    self.config = config
    self.workers = workers
    self.data = self._load(config)
    src, tgt = self.data.ids["train"]
    if config.data.train_size:
      src, tgt = src[:config.data.train_size], tgt[:config.data.train_size]
    self.batcher = multi30k.TranslationBatcher(
        src, tgt, workers.num_workers, config.workers.local_batch_size,
        config.seed)
    self.steps_per_epoch = self.batcher.steps_per_epoch
    self.examples_per_step = (workers.num_workers
                              * config.workers.local_batch_size)
    self.model = models.get_model(
        "transformer", src_vocab_size=len(self.data.src_vocab),
        tgt_vocab_size=len(self.data.tgt_vocab),
        **config.model.kwargs.to_dict())
    size = config.data.eval_size or None
    self.valid = tuple(x[:size] for x in self.data.ids["validation"])
    self.test = tuple(x[:size] for x in self.data.ids["test"])
    self.test_text = self.data.text["test"][1][:size]
    self._eval_step = jax.jit(self._eval_step_fn)

  @staticmethod
  def _load(config) -> multi30k.TranslationData:
    if config.data.source == "synthetic":
      return _synthetic_translation(config)
    return multi30k.load_translation_data(data_dir(config))

  def init(self, rng):
    tokens = jnp.ones((1, 8), jnp.int32)
    return self.model.init(rng, tokens, tokens, train=False)["params"], {}

  def loss(self, params, model_state, batch, rng, step):
    del step
    src, tgt = batch
    logits = self.model.apply({"params": params}, src, tgt[:, :-1], train=True,
                              rngs={"dropout": rng})
    loss = models.label_smoothed_cross_entropy(logits, tgt[:, 1:],
                                               self.label_smoothing)
    return loss, (model_state, {})

  def train_batch(self, step: int) -> Batch:
    return place(self.workers, self.batcher.batch(step))

  def _eval_step_fn(self, params, src, tgt, mask):
    logits = self.model.apply({"params": params}, src, tgt[:, :-1],
                              train=False).astype(jnp.float32)
    targets = tgt[:, 1:]
    weights = (targets != multi30k.PAD_ID) * mask[:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)

  def evaluate(self, params, model_state, *, final: bool = True):
    del model_state
    batch_size = self.config.data.eval_batch_size
    total = count = 0.0
    for src, tgt, mask in multi30k.eval_batches(*self.valid, batch_size):
      loss, n = self._eval_step(params, src, tgt, mask)
      total, count = total + float(loss), count + float(n)
    mean = total / max(count, 1.0)
    metrics = {"valid_loss": mean, "valid_perplexity": float(np.exp(mean))}
    # Configurations saved before the field existed decoded every time.
    if final or self.config.data.get("bleu_at_every_eval", True):
      metrics["test_bleu"] = self.test_bleu(params)
    return metrics

  def test_bleu(self, params) -> float:
    """Corpus BLEU of the decoded test set (`data.beam_size`, greedy at 1)."""
    batch_size = self.config.data.eval_batch_size
    hypotheses = []
    for src, _, mask in multi30k.eval_batches(*self.test, batch_size):
      if self.config.data.beam_size > 1:
        out, _ = models.beam_search(
            self.model, params, src, max_len=self.config.data.max_decode_len,
            bos_id=multi30k.BOS_ID, eos_id=multi30k.EOS_ID,
            beam_size=self.config.data.beam_size)
      else:
        out = models.greedy_decode(
            self.model, params, src, max_len=self.config.data.max_decode_len,
            bos_id=multi30k.BOS_ID, eos_id=multi30k.EOS_ID)
      hypotheses.extend(np.asarray(out)[np.asarray(mask)].tolist())
    return multi30k.bleu(hypotheses, self.test_text, self.data.tgt_vocab,
                         self.data.tgt_tokenizer)


def _synthetic_translation(config) -> multi30k.TranslationData:
  """A learnable toy translation: the target is the reversed source."""
  words = tuple(f"w{i}" for i in range(config.data.synthetic_vocab_size))
  vocab = common.Vocab(multi30k.SPECIALS + words, unk=multi30k.UNK)
  tokenizer = multi30k.Tokenizer("de")
  rng = np.random.default_rng(1234)
  sizes = {"train": config.data.train_size or 64,
           "validation": config.data.eval_size or 8,
           "test": config.data.eval_size or 8}
  text, ids = {}, {}
  for split, n in sizes.items():
    sentences = [list(rng.choice(words, rng.integers(2, 7))) for _ in range(n)]
    src = [np.asarray(vocab.encode(s) + [multi30k.EOS_ID], np.int32)
           for s in sentences]
    tgt = [np.asarray([multi30k.BOS_ID] + vocab.encode(s[::-1])
                      + [multi30k.EOS_ID], np.int32) for s in sentences]
    ids[split] = (src, tgt)
    text[split] = ([" ".join(s) for s in sentences],
                   [" ".join(s[::-1]) for s in sentences])
  return multi30k.TranslationData(text, tokenizer, tokenizer, vocab, vocab,
                                  ids)


TASKS = {
    "classification": Classification,
    "language_model": LanguageModel,
    "translation": Translation,
}


def check_data(config: ml_collections.ConfigDict) -> None:
  """Checks that the files the run will read are there, without reading them.

  Raises:
    MissingDataError: the data directory or one of its files is missing; the
      message names the files and `data.data_dir` / $EXTRAP_OPTAX_DATA_DIR.
  """
  if config.data.source == "synthetic":
    return
  root = data_dir(config)
  if config.task == "classification":
    source = Classification._resolve_source(config)
    if source == "tfds":
      return  # tfds downloads and checks its own files.
    contents = (cifar.JPEG_FULL_CONTENTS if source == "jpeg_full"
                else cifar.JPEG_SUBSET_CONTENTS)
    common.resolve_data_dir(root, cifar.JPEG_SUBDIR, contents)
  elif config.task == "language_model":
    common.resolve_data_dir(root, wikitext2.SUBDIR, wikitext2.MANUAL_CONTENTS)
  elif config.task == "translation":
    common.resolve_data_dir(root, multi30k.SUBDIR, multi30k.expected_files())


def make_task(config: ml_collections.ConfigDict,
              workers: extrap_optax.Workers) -> Task:
  """Builds the task `config.task` for `workers`."""
  if config.task not in TASKS:
    raise ValueError(f"Unknown task {config.task!r}; choose one of "
                     f"{', '.join(TASKS)}.")
  return TASKS[config.task](config, workers)
