"""CIFAR for K data-parallel workers: batches made on the device from the step.

`DeviceCifar` keeps the uint8 training set on the accelerator and makes each
step's (K, B, 32, 32, 3) batch in one jitted function of the global step:
per-epoch shuffle, gather, pad-4 random crop, horizontal flip, normalisation.
Normalisation uses the paper's constants. Their std values (0.2023, 0.1994,
0.2010 for CIFAR-10) are the widely copied ones, smaller than the pixel std
(about 0.247, 0.243, 0.262), so normalised pixels have std about 1.2-1.3.

The data come from `experiments.input_pipeline.cifar_tfds`.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from experiments import random_streams
from experiments.input_pipeline.cifar_tfds import STATS

# Random crops pad each side by this many pixels.
PAD = 4


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
  key = random_streams.stream_key(seed, "partition")
  permutation = jax.random.permutation(key, num_examples)
  return np.asarray(permutation[:num_workers * size]).reshape(
      num_workers, size).astype(np.int32)


def normalize(images: jax.Array, mean: tuple[float, ...],
              std: tuple[float, ...]) -> jax.Array:
  """uint8 images -> float32 `(x / 255 - mean) / std` per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# One compiled program per (shape, mean, std) for all evaluations of a run.
_normalize_jit = jax.jit(normalize, static_argnums=(1, 2))


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

  A `common.Batcher`.

  Worker k draws from its own partition `worker_partitions(N, K, seed)[k]`.
  In epoch e it walks through that partition in the order of a permutation
  keyed by `fold_in(fold_in(stream_key(seed, "shuffle"), e), k)`
  (`experiments.random_streams`), B examples a step, for `steps_per_epoch =
  (N // K) // B` steps; the last `(N // K) mod B` examples of each epoch's
  order are skipped (different ones every epoch). Augmentation is keyed by
  the "augment" stream folded with (e, step in epoch, k). Everything is a
  function of the global step,
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
    self._keys = (random_streams.stream_key(seed, "shuffle"),
                  random_streams.stream_key(seed, "augment"))
    self._static = dict(steps_per_epoch=self.steps_per_epoch,
                        local_batch=local_batch)
    self._batch_static = dict(self._static, mean=tuple(mean), std=tuple(std),
                              augment_images=augment_images,
                              sharding=sharding)

  def indices(self, step: int | jax.Array) -> jax.Array:
    """(K, B) training-set indices of the global step's batch."""
    return _indices_jit(self._arrays[2], step, self._keys[0], **self._static)

  def batch(self, step: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images (K, B, 32, 32, 3) float32 and labels (K, B) int32."""
    return _batch_jit(*self._arrays, step, *self._keys, **self._batch_static)


def _epoch_and_index(step, steps_per_epoch):
  return step // steps_per_epoch, step % steps_per_epoch


# Module-level jits with static configuration: pipelines with the same
# shapes and settings share one compilation.
@functools.partial(jax.jit, static_argnames=("steps_per_epoch", "local_batch"))
def _indices_jit(partitions, step, shuffle_key, *, steps_per_epoch,
                 local_batch):
  epoch, index = _epoch_and_index(step, steps_per_epoch)
  epoch_key = jax.random.fold_in(shuffle_key, epoch)

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
def _batch_jit(images, labels, partitions, step, shuffle_key, augment_key, *,
               steps_per_epoch, local_batch, mean, std, augment_images,
               sharding):
  indices = _indices_jit(partitions, step, shuffle_key,
                         steps_per_epoch=steps_per_epoch,
                         local_batch=local_batch)
  batch = images[indices]
  if augment_images:
    epoch, index = _epoch_and_index(step, steps_per_epoch)
    step_key = jax.random.fold_in(jax.random.fold_in(augment_key, epoch),
                                  index)
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
  mean, std = tuple(map(float, mean)), tuple(map(float, std))
  for start in range(0, total, batch_size):
    stop = start + batch_size
    yield (_normalize_jit(padded_images[start:stop], mean, std),
           jnp.asarray(padded_labels[start:stop]), jnp.asarray(mask[start:stop]))
