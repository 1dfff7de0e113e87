"""Image classification: CIFAR-10/100 with ResNet-20 or VGG-11, top-1 accuracy.

Data sources (`config.data.source`): "auto" takes CIFAR-10 from
`$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg` when it exists, else tfds; "synthetic"
makes random data of the same shapes (`tasks.synthetic`). In `cifar10-jpeg`,
"auto", "jpeg" and "local" take the full set (`cifar10_jpeg_full.npz`, 50,000
train images) when it is there, else the subset (`cifar10_jpeg_subset.npz`,
10,000); "jpeg_full" and "jpeg_subset" force one. Both are JPEG quality 75,
not the original pixels; "tfds" has the original ones.
`Classification.data_source` says which source was used.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax
from experiments import models
from experiments.input_pipeline import cifar
from experiments.input_pipeline import cifar_jpeg
from experiments.input_pipeline import cifar_tfds
from experiments.input_pipeline import common
from experiments.tasks import synthetic
from experiments.tasks.base import Batch
from experiments.tasks.base import data_dir
from experiments.tasks.base import local_eval_mesh
from experiments.tasks.base import round_up
from experiments.tasks.base import Task

# The concrete image sources (`Classification.resolve_source`), as recorded
# in `Classification.data_source`.
SOURCE_NAMES = {
    "synthetic": "synthetic",
    "tfds": "tfds CifarBinary (original pixels)",
    "jpeg_full": f"{cifar_tfds.JPEG_FULL_FILE.removesuffix('.npz')} "
                 "(JPEG quality 75)",
    "jpeg_subset": f"{cifar_tfds.JPEG_FILE.removesuffix('.npz')} "
                   "(JPEG quality 75, 1,000 train images per class)",
}


class Classification(Task):
  """CIFAR-10/100 with ResNet-20 or VGG-11; top-1 accuracy on the test set."""

  throughput_unit = "img/s"
  main_metric = "test_accuracy"
  higher_is_better = True
  measures_train_subset = True

  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    self.config = config
    # Which data was used, e.g. "cifar10_jpeg_full (JPEG quality 75)".
    self.data_source = SOURCE_NAMES[self.resolve_source(config)]
    data = self._load(config)
    train_images, train_labels = class_balanced_prefix(
        data.train_images, data.train_labels, config.data.train_size)
    self.test_images, self.test_labels = subset(
        data.test_images, data.test_labels, config.data.eval_size)
    # The same subset for every run on the same data, whatever the seed.
    self.train_eval_images, self.train_eval_labels = subset(
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
    self.eval_mesh = local_eval_mesh()
    self.eval_batch_size = round_up(config.data.eval_batch_size,
                                     len(jax.local_devices()))
    self._eval_step = jax.jit(self._eval_step_fn)
    self._train_mode_step = jax.jit(self._train_mode_step_fn)

  @staticmethod
  def resolve_source(config: ml_collections.ConfigDict) -> str:
    """`config.data.source` made concrete: a key of `SOURCE_NAMES`.

    "auto" is the JPEG data when `<root>/cifar10-jpeg` exists (CIFAR-10
    only), else "tfds"; "auto", "jpeg" and "local" are "jpeg_full" when
    `<root>/cifar10-jpeg/cifar10_jpeg_full.npz` exists, else "jpeg_subset".
    """
    source, dataset = config.data.source, config.data.dataset
    if source in ("synthetic", "tfds"):
      return source
    root = data_dir(config)
    jpeg_dir = None if root is None else root / cifar_tfds.JPEG_SUBDIR
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
                  and (jpeg_dir / cifar_tfds.JPEG_FULL_FILE).is_file())
      source = "jpeg_full" if has_full else "jpeg_subset"
    return source

  @staticmethod
  def check_data(config: ml_collections.ConfigDict) -> None:
    source = Classification.resolve_source(config)
    if source in ("synthetic", "tfds"):
      return  # tfds downloads and checks its own files.
    contents = (cifar_jpeg.JPEG_FULL_CONTENTS if source == "jpeg_full"
                else cifar_jpeg.JPEG_SUBSET_CONTENTS)
    common.resolve_data_dir(data_dir(config), cifar_tfds.JPEG_SUBDIR, contents)

  @staticmethod
  def _load(config: ml_collections.ConfigDict) -> cifar_tfds.CifarData:
    source = Classification.resolve_source(config)
    if source == "synthetic":
      return synthetic.cifar(config)
    if source == "jpeg_full":
      return cifar_jpeg.load_cifar10_jpeg_full(data_dir(config))
    if source == "jpeg_subset":
      return cifar_jpeg.load_cifar10_jpeg_subset(data_dir(config))
    return cifar_tfds.load_cifar_tfds(config.data.dataset)

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


def subset(images: np.ndarray, labels: np.ndarray,
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
