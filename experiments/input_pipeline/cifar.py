"""CIFAR-10/100 for K data-parallel workers, with augmentation on the device.

Sources, all giving `CifarData` (uint8 NHWC images, int32 labels):

* `load_cifar_tfds("cifar10" | "cifar100")`: the tfds builders, read with
  `builder.as_data_source` (array_record files), which needs no TensorFlow.
  *Preparing* them does: tfds encodes the images as PNG with
  `tf.image.encode_png`, so an unprepared dataset without TensorFlow raises a
  RuntimeError suggesting `pip install tensorflow-cpu` (before downloading
  anything). A dataset prepared elsewhere (array_record) reads without it.
* `load_cifar10_jpeg_subset(data_dir)`: the offline JPEG-decoded CIFAR-10
  subset in `$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg/cifar10_jpeg_subset.npz`
  (10,000 train, 10,000 test; lossy, not the original pixels).

`DeviceCifar` keeps the uint8 training set on the accelerator and makes each
step's (K, B, 32, 32, 3) batch in one jitted function of the global step:
per-epoch shuffle, gather, pad-4 random crop, horizontal flip, normalisation.
Normalisation uses the paper's constants. Their std values (0.2023, 0.1994,
0.2010 for CIFAR-10) are the widely copied ones, smaller than the pixel std
(about 0.247, 0.243, 0.262), so normalised pixels have std about 1.2-1.3.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from experiments.input_pipeline import common

IMAGE_SHAPE = (32, 32, 3)
PAD = 4

# The paper's normalisation constants (App. C), RGB in [0, 1] scale.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

JPEG_SUBDIR = "cifar10-jpeg"
JPEG_FILE = "cifar10_jpeg_subset.npz"
# sha256 of `np.ascontiguousarray(a).tobytes()` per array: the .npz file's
# own hash changes with zip timestamps when it is rebuilt, these do not.
JPEG_SHA256 = {
    "x_train":
        "49346663d4b68981e2c27a5f80121d24e880ad0694f70fc50b53a17c146b25d0",
    "y_train":
        "c5575395e636cadcdfe5764ffc8d56f56d234a4dc687096f8fc2d975dd6a5597",
    "x_test":
        "5a6aa8185204d80b65d3dfb540696dadd5f10d185ded226a96665d3e0fc6259f",
    "y_test":
        "c5575395e636cadcdfe5764ffc8d56f56d234a4dc687096f8fc2d975dd6a5597",
}

# fold_in tags that separate the random streams derived from one seed.
_PARTITION_STREAM, _SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class CifarData:
  """CIFAR in memory.

  Attributes:
    train_images: (N, 32, 32, 3) uint8, RGB.
    train_labels: (N,) int32.
    test_images: (M, 32, 32, 3) uint8.
    test_labels: (M,) int32.
    num_classes: 10 or 100.
    mean: per-channel normalisation mean, [0, 1] scale.
    std: per-channel normalisation std, [0, 1] scale.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


def tensorflow_available() -> bool:
  """Whether TensorFlow is importable (tfds needs it to prepare CIFAR)."""
  return importlib.util.find_spec("tensorflow") is not None


def _read_split(builder: tfds.core.DatasetBuilder,
                split: str) -> tuple[np.ndarray, np.ndarray]:
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  images = np.stack([e["image"] for e in examples]).astype(np.uint8)
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return images, labels


def load_cifar_tfds(name: str = "cifar10",
                    tfds_data_dir: common.PathLike | None = None, *,
                    download: bool = True) -> CifarData:
  """Loads CIFAR-10 or CIFAR-100 through tfds (array_record data source).

  Args:
    name: `"cifar10"` or `"cifar100"` (fine labels).
    tfds_data_dir: the tfds data directory; `None` is tfds' default.
    download: prepare the dataset when it is not prepared yet (downloads the
      original archive; needs TensorFlow, see the module docstring).

  Returns:
    The train and test splits with the paper's normalisation constants.

  Raises:
    MissingDataError: not prepared and `download` is false.
    RuntimeError: not prepared and TensorFlow is not installed.
  """
  if name not in STATS:
    raise ValueError(f"Unknown CIFAR variant {name!r}; use one of "
                     f"{sorted(STATS)}.")
  builder = tfds.builder(
      name, data_dir=None if tfds_data_dir is None else str(tfds_data_dir),
      file_format="array_record")
  if not builder.is_prepared():
    if not download:
      raise common.MissingDataError(
          f"tfds dataset {name} is not prepared in {builder.data_dir}; pass "
          "download=True or prepare it with tfds (array_record format).")
    if not tensorflow_available():
      raise RuntimeError(
          f"Preparing the tfds dataset {name} needs TensorFlow (tfds encodes "
          "the images with tf.image.encode_png). Run `pip install "
          "tensorflow-cpu`, or prepare it elsewhere with "
          "file_format='array_record' and point tfds_data_dir at it (reading "
          "needs no TensorFlow), or use load_cifar10_jpeg_subset offline.")
    builder.download_and_prepare()
  train_images, train_labels = _read_split(builder, "train")
  test_images, test_labels = _read_split(builder, "test")
  mean, std = STATS[name]
  return CifarData(train_images, train_labels, test_images, test_labels,
                   NUM_CLASSES[name], mean, std)


def load_cifar10_jpeg_subset(
    data_dir: common.PathLike | None = None) -> CifarData:
  """Loads the offline JPEG-decoded CIFAR-10 subset after checking it.

  Args:
    data_dir: the root data directory holding `cifar10-jpeg/`; `None` means
      `$EXTRAP_OPTAX_DATA_DIR`.

  Returns:
    10,000 train images (1,000 per class) and the 10,000 test images, sorted
    by class, with the CIFAR-10 normalisation constants.

  Raises:
    MissingDataError: the directory or the file is missing.
    ChecksumError: an array has the wrong contents.
  """
  directory = common.resolve_data_dir(data_dir, JPEG_SUBDIR, {
      JPEG_FILE: "npz with x_train/x_test (10000, 32, 32, 3) uint8 and "
                 "y_train/y_test (10000,) int64"})
  path = directory / JPEG_FILE
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in JPEG_SHA256}
  for key, expected in JPEG_SHA256.items():
    common.check_sha256(np.ascontiguousarray(arrays[key]).tobytes(), expected,
                        path, what=f"array {key}")
  mean, std = STATS["cifar10"]
  return CifarData(arrays["x_train"], arrays["y_train"].astype(np.int32),
                   arrays["x_test"], arrays["y_test"].astype(np.int32),
                   NUM_CLASSES["cifar10"], mean, std)


def worker_partitions(num_examples: int, num_workers: int,
                      seed: int) -> np.ndarray:
  """The K disjoint training partitions, fixed for the whole run.

  A permutation of all indices seeded by `seed` is cut into K equal parts;
  the last `num_examples mod K` indices of the permutation are dropped.

  Args:
    num_examples: N.
    num_workers: K.
    seed: the run's seed.

  Returns:
    (K, N // K) int32 example indices; row k is worker k's partition.

  Raises:
    ValueError: N < K.
  """
  if num_workers < 1 or num_examples < num_workers:
    raise ValueError(f"Cannot split {num_examples} examples among "
                     f"{num_workers} workers.")
  size = num_examples // num_workers
  key = jax.random.fold_in(jax.random.key(seed), _PARTITION_STREAM)
  permutation = jax.random.permutation(key, num_examples)
  return np.asarray(permutation[:num_workers * size]).reshape(
      num_workers, size).astype(np.int32)


def normalize(images: jax.Array, mean: tuple[float, ...],
              std: tuple[float, ...]) -> jax.Array:
  """uint8 images -> float32 `(x / 255 - mean) / std` per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def crop_and_flip(images: jax.Array, offsets: jax.Array,
                  flips: jax.Array) -> jax.Array:
  """Zero-pads by 4, crops 32x32 at `offsets`, flips left-right where asked.

  Args:
    images: (n, 32, 32, C).
    offsets: (n, 2) int, the crop's top-left corner (row, column) in the
      padded 40x40 image, each in [0, 8]; (4, 4) is the unshifted image.
    flips: (n,) bool.

  Returns:
    (n, 32, 32, C) augmented images, same dtype.
  """
  padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  height, width, channels = images.shape[1:]

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  cropped = jax.vmap(crop)(padded, offsets)
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)


def augment(images: jax.Array, key: jax.Array) -> jax.Array:
  """Random pad-4 crop (offsets uniform in [0, 8]^2) and flip (p = 0.5)."""
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (images.shape[0], 2), 0,
                               2 * PAD + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
  return crop_and_flip(images, offsets, flips)


class DeviceCifar:
  """K-worker training batches made on the device from the global step.

  Worker k draws from its own partition `worker_partitions(N, K, seed)[k]`.
  In epoch e it walks through that partition in the order of a permutation
  keyed by (seed, e, k), B examples a step, for `steps_per_epoch =
  (N // K) // B` steps; the last `(N // K) mod B` examples of each epoch's
  order are skipped (different ones every epoch). Augmentation is keyed by
  (seed, e, step in epoch, k). Everything is a function of the global step,
  so a resumed run reproduces its batches from the step number alone.
  """

  def __init__(self, train_images: np.ndarray, train_labels: np.ndarray,
               num_workers: int, local_batch: int, seed: int, *,
               mean: tuple[float, ...] = STATS["cifar10"][0],
               std: tuple[float, ...] = STATS["cifar10"][1],
               augment_images: bool = True,
               sharding: jax.sharding.NamedSharding | None = None):
    """Puts the training set on the device.

    Args:
      train_images: (N, 32, 32, 3) uint8.
      train_labels: (N,) int.
      num_workers: K.
      local_batch: B.
      seed: the run's seed.
      mean: normalisation mean.
      std: normalisation std.
      augment_images: apply the random crop and flip.
      sharding: optional sharding of the outputs' leading worker axis (e.g.
        `NamedSharding(mesh, P('workers'))`); the data set is then replicated
        over `sharding.mesh`.

    Raises:
      ValueError: a partition is smaller than one local batch.
    """
    num_examples = train_images.shape[0]
    if train_labels.shape != (num_examples,):
      raise ValueError(f"{num_examples} images but labels of shape "
                       f"{train_labels.shape}.")
    if local_batch < 1:
      raise ValueError(f"local_batch={local_batch} must be positive.")
    partitions = worker_partitions(num_examples, num_workers, seed)
    if partitions.shape[1] < local_batch:
      raise ValueError(
          f"{num_examples} examples give each of {num_workers} workers "
          f"{partitions.shape[1]} examples, fewer than local_batch="
          f"{local_batch}.")
    self.num_workers = num_workers
    self.local_batch = local_batch
    self.steps_per_epoch = partitions.shape[1] // local_batch
    self.partitions = partitions
    replicated = None if sharding is None else jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec())
    self._arrays = tuple(jax.device_put(a, replicated) for a in (
        np.asarray(train_images, np.uint8),
        np.asarray(train_labels, np.int32), partitions))
    self._key = jax.random.key(seed)
    self._static = dict(steps_per_epoch=self.steps_per_epoch,
                        local_batch=local_batch)
    self._batch_static = dict(self._static, mean=tuple(mean), std=tuple(std),
                              augment_images=augment_images,
                              sharding=sharding)

  def indices(self, step: int | jax.Array) -> jax.Array:
    """(K, B) training-set indices of the global step's batch."""
    return _indices_jit(self._arrays[2], step, self._key, **self._static)

  def batch(self, step: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images (K, B, 32, 32, 3) float32 and labels (K, B) int32."""
    return _batch_jit(*self._arrays, step, self._key, **self._batch_static)


def _epoch_and_index(step, steps_per_epoch):
  return step // steps_per_epoch, step % steps_per_epoch


# Module-level jits with static configuration: pipelines with the same
# shapes and settings share one compilation.
@functools.partial(jax.jit, static_argnames=("steps_per_epoch", "local_batch"))
def _indices_jit(partitions, step, base_key, *, steps_per_epoch, local_batch):
  epoch, index = _epoch_and_index(step, steps_per_epoch)
  epoch_key = jax.random.fold_in(
      jax.random.fold_in(base_key, _SHUFFLE_STREAM), epoch)

  def worker(partition, k):
    order = jax.random.permutation(jax.random.fold_in(epoch_key, k),
                                   partition.shape[0])
    chosen = jax.lax.dynamic_slice_in_dim(order, index * local_batch,
                                          local_batch)
    return partition[chosen]

  return jax.vmap(worker)(partitions, jnp.arange(partitions.shape[0]))


@functools.partial(jax.jit, static_argnames=(
    "steps_per_epoch", "local_batch", "mean", "std", "augment_images",
    "sharding"))
def _batch_jit(images, labels, partitions, step, base_key, *, steps_per_epoch,
               local_batch, mean, std, augment_images, sharding):
  indices = _indices_jit(partitions, step, base_key,
                         steps_per_epoch=steps_per_epoch,
                         local_batch=local_batch)
  batch = images[indices]
  if augment_images:
    epoch, index = _epoch_and_index(step, steps_per_epoch)
    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        base_key, _AUGMENT_STREAM), epoch), index)
    keys = jax.vmap(functools.partial(jax.random.fold_in, step_key))(
        jnp.arange(indices.shape[0]))
    batch = jax.vmap(augment)(batch, keys)
  outputs = normalize(batch, mean, std), labels[indices]
  if sharding is not None:
    outputs = jax.lax.with_sharding_constraint(outputs, sharding)
  return outputs


def eval_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int,
    mean: tuple[float, ...], std: tuple[float, ...],
) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
  """Yields normalised `(images, labels, mask)` in order, `batch_size` each.

  The last batch is filled with zero images and label 0 whose `mask` is
  False, so every batch has the same shape.
  """
  num_examples = images.shape[0]
  total = -(-num_examples // batch_size) * batch_size
  padded_images = np.zeros((total,) + images.shape[1:], np.uint8)
  padded_images[:num_examples] = images
  padded_labels = np.zeros((total,), np.int32)
  padded_labels[:num_examples] = labels
  mask = np.arange(total) < num_examples
  normalize_fn = jax.jit(functools.partial(normalize, mean=tuple(mean),
                                           std=tuple(std)))
  for start in range(0, total, batch_size):
    stop = start + batch_size
    yield (normalize_fn(padded_images[start:stop]),
           jnp.asarray(padded_labels[start:stop]), jnp.asarray(mask[start:stop]))
