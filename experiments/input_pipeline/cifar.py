"""CIFAR-10/100 for K data-parallel workers, with augmentation on the device.

Sources, all giving `CifarData` (uint8 NHWC images, int32 labels):

* `load_cifar_tfds("cifar10" | "cifar100")`: the tfds builder `CifarBinary`
  (configs `cifar10`, `cifar100`), prepared as array_record and read with
  `builder.as_data_source`; neither step needs TensorFlow. It downloads the
  original binary archive (the URL and checksum of the stock tfds builders,
  registered in `checksums.tsv`), or takes it from a manual directory offline,
  and stores the raw uint8 pixels, so the images are exactly those of the
  stock `cifar10`/`cifar100` builders (which PNG-encode the same archive with
  `tf.image.encode_png`) without their TensorFlow dependency.
* `load_cifar10_jpeg_full(data_dir)`: the full offline CIFAR-10 as JPEG files,
  `$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg/cifar10_jpeg_full.npz` (50,000 train,
  10,000 test), decoded with Pillow and cached decoded under
  `$XDG_CACHE_HOME/extrap_optax` (default `~/.cache/extrap_optax`).
* `load_cifar10_jpeg_subset(data_dir)`: the offline JPEG-decoded CIFAR-10
  subset in `$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg/cifar10_jpeg_subset.npz`
  (10,000 train, 10,000 test): the first 1,000 train images of each class of
  the full set, and its test set.

Both JPEG sources were encoded at JPEG quality 75: their pixels differ
slightly from the original CIFAR-10, so accuracies on them are not directly
comparable with published ones (which use the original pixels, as
`load_cifar_tfds` does).

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
import hashlib
import io
import logging
import os
import pathlib
import tarfile
import tempfile
import zipfile
from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import requests
import tensorflow_datasets as tfds

from experiments import random_streams
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

# All 60,000 CIFAR-10 images as their original JPEG files (quality 75); the
# subset above is its first 1,000 train images per class and its test set.
JPEG_FULL_FILE = "cifar10_jpeg_full.npz"
# sha256 of the .npz file itself (it is checked, then decoded).
JPEG_FULL_SHA256 = (
    "729e9001ab8ec12c8b75986b08d3b6b32cc94add1e7d78b4cdb65e5475679a9a")
# Images per split; every class has a tenth of them.
JPEG_FULL_SIZES = {"train": 50_000, "test": 10_000}
# File -> description, for the missing-file errors.
JPEG_SUBSET_CONTENTS = {
    JPEG_FILE: "npz with x_train/x_test (10000, 32, 32, 3) uint8 and "
               "y_train/y_test (10000,) int64"}
JPEG_FULL_CONTENTS = {
    JPEG_FULL_FILE: "npz of the 60,000 CIFAR-10 JPEG files: train_jpeg/"
                    "test_jpeg concatenated bytes (uint8), train_offsets/"
                    "test_offsets (int64), train_labels/test_labels "
                    "(int64), class_names"}
CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                       "frog", "horse", "ship", "truck")
# Sub-directory of `$XDG_CACHE_HOME` (default `~/.cache`) for decoded arrays.
CACHE_SUBDIR = "extrap_optax"
# Bump when the cache's layout changes, so old caches are not read.
_CACHE_VERSION = 1

# Default manual directory (under $EXTRAP_OPTAX_DATA_DIR) for the archives.
MANUAL_SUBDIR = "cifar-binary"



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


@dataclasses.dataclass(frozen=True)
class BinaryArchive:
  """The layout of an original CIFAR binary archive.

  Attributes:
    url: where the stock tfds builder downloads it (checksum in
      `checksums.tsv`).
    file_name: the archive's file name, also its name in a manual directory.
    directory: the top-level directory inside the archive.
    split_files: split -> the record files, in order.
    labels: `(feature, names file, number of classes)` per label byte, in
      record order.
  """
  url: str
  file_name: str
  directory: str
  split_files: Mapping[str, tuple[str, ...]]
  labels: tuple[tuple[str, str, int], ...]


ARCHIVES = {
    "cifar10": BinaryArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        file_name="cifar-10-binary.tar.gz",
        directory="cifar-10-batches-bin",
        split_files={
            "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            "test": ("test_batch.bin",),
        },
        labels=(("label", "batches.meta.txt", 10),),
    ),
    "cifar100": BinaryArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        file_name="cifar-100-binary.tar.gz",
        directory="cifar-100-binary",
        split_files={"train": ("train.bin",), "test": ("test.bin",)},
        labels=(("coarse_label", "coarse_label_names.txt", 20),
                ("label", "fine_label_names.txt", 100)),
    ),
}

_CITATION = """\
@techreport{krizhevsky2009learning,
  title={Learning Multiple Layers of Features from Tiny Images},
  author={Krizhevsky, Alex},
  institution={University of Toronto},
  year={2009}
}
"""


def parse_records(data: bytes,
                  label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a CIFAR binary record file.

  Each record is `label_bytes` label bytes, then 3,072 pixel bytes: the
  32x32 red, green and blue planes, each row-major.

  Args:
    data: the file's contents.
    label_bytes: 1 (CIFAR-10) or 2 (CIFAR-100: coarse, then fine).

  Returns:
    `(images, labels)`: (N, 32, 32, 3) uint8 RGB and (N, label_bytes) uint8.

  Raises:
    ValueError: the length is not a whole number of records.
  """
  record = label_bytes + int(np.prod(IMAGE_SHAPE))
  if len(data) % record:
    raise ValueError(f"{len(data)} bytes are not a whole number of "
                     f"{record}-byte CIFAR records.")
  records = np.frombuffer(data, np.uint8).reshape(-1, record)
  planes = records[:, label_bytes:].reshape(-1, IMAGE_SHAPE[2],
                                            *IMAGE_SHAPE[:2])
  images = np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
  return images, records[:, :label_bytes]


def _read_archive(path: common.PathLike,
                  archive: BinaryArchive) -> dict[str, bytes]:
  """Reads the record and label-name files of an archive in one pass."""
  wanted = {f for files in archive.split_files.values() for f in files}
  wanted |= {names for _, names, _ in archive.labels}
  members = {}
  with tarfile.open(os.fspath(path), mode="r|gz") as tar:
    for member in tar:
      directory, _, name = member.name.rpartition("/")
      if member.isfile() and directory == archive.directory and name in wanted:
        members[name] = tar.extractfile(member).read()
  missing = sorted(wanted - set(members))
  if missing:
    raise ValueError(f"{path} is not {archive.file_name}: "
                     f"{archive.directory}/ lacks {', '.join(missing)}.")
  return members


class CifarBinary(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10/100 from the original binary archives, raw uint8 pixels.

  Same archives, pixels and labels as the stock tfds `cifar10`/`cifar100`
  builders, but the images are stored as uint8 tensors instead of PNG, so
  preparing needs no TensorFlow. Examples keep the archive's order
  (`disable_shuffling`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Original binary archives, uint8 tensors."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="cifar10", description="CIFAR-10."),
      tfds.core.BuilderConfig(
          name="cifar100",
          description="CIFAR-100; `label` is the fine label."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional. For offline use put cifar-10-binary.tar.gz and/or "
      "cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/ in the "
      "manual directory, e.g. $EXTRAP_OPTAX_DATA_DIR/cifar-binary. Without "
      "it the archive is downloaded.")

  def _info(self) -> tfds.core.DatasetInfo:
    archive = ARCHIVES[self.builder_config.name]
    features = {"image": tfds.features.Tensor(shape=IMAGE_SHAPE,
                                              dtype=np.uint8)}
    features.update({key: tfds.features.ClassLabel(num_classes=n)
                     for key, _, n in archive.labels})
    return tfds.core.DatasetInfo(
        builder=self,
        description=("CIFAR from the original binary archive; images are "
                     "raw (32, 32, 3) uint8 RGB."),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    # With a manual dir holding the archive, `download` takes it from there
    # (tfds matches the file name registered in checksums.tsv); either way
    # tfds checks the registered size and sha256.
    archive = ARCHIVES[self.builder_config.name]
    members = _read_archive(dl_manager.download(archive.url), archive)
    for key, names_file, _ in archive.labels:
      text = members[names_file].decode("utf-8")
      self.info.features[key].names = [
          line.strip() for line in text.splitlines() if line.strip()]
    return {split: self._generate_examples(members, files, archive)
            for split, files in archive.split_files.items()}

  def _generate_examples(self, members: Mapping[str, bytes],
                         files: tuple[str, ...], archive: BinaryArchive):
    keys = [key for key, _, _ in archive.labels]
    index = 0
    for file in files:
      images, labels = parse_records(members[file], len(keys))
      for image, label in zip(images, labels):
        yield index, {"image": image,
                      **{k: int(v) for k, v in zip(keys, label)}}
        index += 1


def _read_split(builder: tfds.core.DatasetBuilder,
                split: str) -> tuple[np.ndarray, np.ndarray]:
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  images = np.stack([e["image"] for e in examples]).astype(np.uint8)
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return images, labels


def _manual_dir(builder: CifarBinary,
                manual_dir: common.PathLike | None) -> pathlib.Path:
  """`manual_dir`, else `$EXTRAP_OPTAX_DATA_DIR/cifar-binary`, else tfds'."""
  if manual_dir is not None:
    return pathlib.Path(manual_dir)
  root = os.environ.get(common.DATA_DIR_ENV)
  if root:
    return pathlib.Path(root) / MANUAL_SUBDIR
  return pathlib.Path(builder.data_dir_root) / "downloads" / "manual"


def load_cifar_tfds(name: str = "cifar10",
                    tfds_data_dir: common.PathLike | None = None, *,
                    download: bool = True,
                    manual_dir: common.PathLike | None = None) -> CifarData:
  """Loads CIFAR-10 or CIFAR-100 through tfds (`CifarBinary`, no TensorFlow).

  Args:
    name: `"cifar10"` or `"cifar100"` (fine labels).
    tfds_data_dir: the tfds data directory; `None` is tfds' default.
    download: prepare the dataset when it is not prepared yet, from the
      archive in the manual directory when it is there, else downloaded.
    manual_dir: where to look for the original archive
      (`cifar-10-binary.tar.gz` or `cifar-100-binary.tar.gz`); `None` means
      `$EXTRAP_OPTAX_DATA_DIR/cifar-binary` when that variable is set, else
      tfds' `<tfds_data_dir>/downloads/manual`.

  Returns:
    The train and test splits with the paper's normalisation constants.

  Raises:
    MissingDataError: not prepared and `download` is false, or the archive is
      neither in the manual directory nor downloadable.
    NonMatchingChecksumError: (tfds') the archive has another size or sha256
      than the original.
  """
  if name not in STATS:
    raise ValueError(f"Unknown CIFAR variant {name!r}; use one of "
                     f"{sorted(STATS)}.")
  builder = CifarBinary(
      config=name,
      data_dir=None if tfds_data_dir is None else str(tfds_data_dir),
      file_format="array_record")
  if not builder.is_prepared():
    archive = ARCHIVES[name]
    manual = _manual_dir(builder, manual_dir)
    if not download:
      raise common.MissingDataError(
          f"tfds dataset {builder.info.full_name} is not prepared in "
          f"{builder.data_dir}; pass download=True to prepare it from "
          f"{manual / archive.file_name} or, without that file, from "
          f"{archive.url} (no TensorFlow needed).")
    config = tfds.download.DownloadConfig(manual_dir=str(manual),
                                          try_download_gcs=False)
    try:
      builder.download_and_prepare(download_config=config)
    except (tfds.download.DownloadError,
            requests.RequestException) as error:
      raise common.MissingDataError(
          _no_archive_message(builder, archive, manual, error)) from error
  train_images, train_labels = _read_split(builder, "train")
  test_images, test_labels = _read_split(builder, "test")
  mean, std = STATS[name]
  return CifarData(train_images, train_labels, test_images, test_labels,
                   NUM_CLASSES[name], mean, std)


def _no_archive_message(builder: CifarBinary, archive: BinaryArchive,
                        manual: pathlib.Path, error: Exception) -> str:
  info = builder.url_infos[archive.url]
  return (
      f"Cannot prepare {builder.info.full_name}: {manual / archive.file_name} "
      f"does not exist and downloading {archive.url} failed "
      f"({type(error).__name__}: {error}). Either run again with internet "
      f"access, or download {archive.file_name} ({int(info.size)} bytes, "
      f"sha256 {info.checksum}) on another machine and put it in {manual} "
      f"(pass manual_dir, or set ${common.DATA_DIR_ENV} to use "
      f"${common.DATA_DIR_ENV}/{MANUAL_SUBDIR}); no TensorFlow is needed. "
      f"Offline CIFAR-10 alternatives (JPEG quality 75, so not the original "
      f"pixels): the full set {JPEG_FULL_FILE} (load_cifar10_jpeg_full) or "
      f"the subset {JPEG_FILE} (load_cifar10_jpeg_subset), both in "
      f"${common.DATA_DIR_ENV}/{JPEG_SUBDIR}.")


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
  directory = common.resolve_data_dir(data_dir, JPEG_SUBDIR,
                                      JPEG_SUBSET_CONTENTS)
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


def default_cache_dir() -> pathlib.Path:
  """`$XDG_CACHE_HOME/extrap_optax`, else `~/.cache/extrap_optax`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / CACHE_SUBDIR


def file_sha256(path: common.PathLike, chunk_size: int = 1 << 20) -> str:
  """The hex sha256 of a file, read `chunk_size` bytes at a time."""
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for chunk in iter(lambda: file.read(chunk_size), b""):
      digest.update(chunk)
  return digest.hexdigest()


def decode_jpeg_arrays(jpeg: np.ndarray, offsets: np.ndarray, *,
                       what: str = "JPEG data") -> np.ndarray:
  """Decodes concatenated JPEG files into (N, 32, 32, 3) uint8 RGB images.

  File i is `jpeg[offsets[i]:offsets[i + 1]]`; each is decoded with Pillow as
  `np.asarray(Image.open(...).convert("RGB"))`.

  Args:
    jpeg: (total bytes,) uint8, the files concatenated.
    offsets: (N + 1,) int, starting at 0, strictly increasing, ending at
      `len(jpeg)`.
    what: what the arrays are, for error messages.

  Returns:
    (N, 32, 32, 3) uint8.

  Raises:
    ValueError: the offsets do not fit the bytes, or a file does not decode
      to a 32x32 image.
    ImportError: Pillow is not installed.
  """
  jpeg, offsets = np.asarray(jpeg), np.asarray(offsets)
  if jpeg.ndim != 1 or jpeg.dtype != np.uint8:
    raise ValueError(f"{what}: the JPEG bytes must be a 1-D uint8 array, not "
                     f"{jpeg.dtype} of shape {jpeg.shape}.")
  if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(
      offsets.dtype, np.integer):
    raise ValueError(f"{what}: the offsets must be a non-empty 1-D integer "
                     f"array, not {offsets.dtype} of shape {offsets.shape}.")
  if offsets[0] != 0 or offsets[-1] != jpeg.size:
    raise ValueError(
        f"{what}: the offsets run from {offsets[0]} to {offsets[-1]}, but "
        f"must run from 0 to the byte array's length {jpeg.size}.")
  sizes = np.diff(offsets)
  if np.any(sizes <= 0):
    first = int(np.argmax(sizes <= 0))
    raise ValueError(
        f"{what}: the offsets must be strictly increasing (no empty file), "
        f"but file {first} spans bytes {offsets[first]}:{offsets[first + 1]}.")
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        "Decoding the CIFAR-10 JPEG files needs Pillow: pip install Pillow "
        "(part of the `experiments` extra).") from error
  data = jpeg.tobytes()
  images = np.empty((sizes.size,) + IMAGE_SHAPE, np.uint8)
  for i, (start, stop) in enumerate(zip(offsets[:-1].tolist(),
                                        offsets[1:].tolist())):
    try:
      with Image.open(io.BytesIO(data[start:stop])) as image:
        pixels = np.asarray(image.convert("RGB"))
    except OSError as error:  # Includes PIL.UnidentifiedImageError.
      raise ValueError(f"{what}: file {i} (bytes {start}:{stop}) is not a "
                       f"readable JPEG: {error}") from error
    if pixels.shape != IMAGE_SHAPE:
      raise ValueError(f"{what}: file {i} decodes to shape {pixels.shape}, "
                       f"not {IMAGE_SHAPE}.")
    images[i] = pixels
  return images


def _check_labels(labels: np.ndarray, size: int, what: str) -> None:
  """Raises ValueError unless `labels` are (size,) with size/10 per class."""
  num_classes = NUM_CLASSES["cifar10"]
  if labels.shape != (size,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{what}: expected ({size},) integer labels, got "
                     f"{labels.dtype} of shape {labels.shape}.")
  if size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}].")
  counts = np.bincount(labels, minlength=num_classes)
  if np.any(counts != size // num_classes):
    raise ValueError(f"{what}: expected {size // num_classes} labels per "
                     f"class, got {counts.tolist()}.")


def _decode_jpeg_full(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Checks the arrays of `cifar10_jpeg_full.npz` and decodes the images."""
  keys = [f"{split}_{part}" for split in JPEG_FULL_SIZES
          for part in ("jpeg", "offsets", "labels")] + ["class_names"]
  with np.load(path, allow_pickle=False) as npz:
    missing = sorted(set(keys) - set(npz.files))
    if missing:
      raise ValueError(f"{path} lacks the arrays {', '.join(missing)} (it "
                       f"has {', '.join(sorted(npz.files))}).")
    arrays = {key: npz[key] for key in keys}
  names = tuple(str(n) for n in arrays["class_names"].tolist())
  if names != CIFAR10_CLASS_NAMES:
    raise ValueError(f"{path}: class_names are {names}, not the CIFAR-10 "
                     f"classes {CIFAR10_CLASS_NAMES} in their standard order.")
  decoded = {}
  for split, size in JPEG_FULL_SIZES.items():
    what = f"{path} ({split} split)"
    offsets = arrays[f"{split}_offsets"]
    if offsets.shape != (size + 1,):
      raise ValueError(f"{what}: expected {size + 1} offsets for {size} "
                       f"images, got shape {offsets.shape}.")
    _check_labels(arrays[f"{split}_labels"], size, what)
    decoded[f"{split}_images"] = decode_jpeg_arrays(
        arrays[f"{split}_jpeg"], offsets, what=what)
    decoded[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int32)
  return decoded


def _check_decoded(arrays: Mapping[str, np.ndarray], what: str) -> None:
  """Raises ValueError unless the decoded arrays have the full set's layout."""
  for split, size in JPEG_FULL_SIZES.items():
    images = arrays[f"{split}_images"]
    labels = arrays[f"{split}_labels"]
    if images.shape != (size,) + IMAGE_SHAPE or images.dtype != np.uint8:
      raise ValueError(f"{what}: {split}_images are {images.dtype} of shape "
                       f"{images.shape}, not uint8 {(size,) + IMAGE_SHAPE}.")
    if labels.dtype != np.int32:
      raise ValueError(f"{what}: {split}_labels are {labels.dtype}, not "
                       "int32.")
    _check_labels(labels, size, f"{what} ({split} split)")


def _cache_file(cache_dir: common.PathLike | None,
                sha256: str) -> pathlib.Path:
  directory = default_cache_dir() if cache_dir is None else pathlib.Path(
      cache_dir)
  return directory / (f"cifar10_jpeg_full-{sha256}-decoded-"
                      f"v{_CACHE_VERSION}.npz")


def _read_cache(path: pathlib.Path,
                sha256: str) -> dict[str, np.ndarray] | None:
  """The decoded arrays from a valid cache file, else `None`."""
  keys = [f"{split}_{part}" for split in JPEG_FULL_SIZES
          for part in ("images", "labels")]
  try:
    if not path.is_file():
      return None
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in keys}
      source = str(npz["source_sha256"])
    if source != sha256:
      raise ValueError(f"it was decoded from a file with sha256 {source}")
    _check_decoded(arrays, str(path))
  except (OSError, ValueError, KeyError, EOFError,
          zipfile.BadZipFile) as error:
    logging.getLogger(__name__).warning(
        "Ignoring the unreadable or invalid cache %s (%s: %s); decoding "
        "again.", path, type(error).__name__, error)
    return None
  return arrays


def _write_cache(path: pathlib.Path, arrays: Mapping[str, np.ndarray],
                 sha256: str) -> bool:
  """Writes the cache atomically; returns False (no error) if it cannot."""
  temporary = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(descriptor, "wb") as file:
      np.savez(file, source_sha256=np.asarray(sha256), **arrays)
    os.replace(temporary, path)
    temporary = None
    return True
  except OSError as error:
    logging.getLogger(__name__).warning(
        "Not caching the decoded CIFAR-10 JPEG set in %s (%s: %s).",
        path.parent, type(error).__name__, error)
    return False
  finally:
    if temporary is not None:
      try:
        os.unlink(temporary)
      except OSError:
        pass


def load_cifar10_jpeg_full(data_dir: common.PathLike | None = None, *,
                           cache_dir: common.PathLike | None = None
                           ) -> CifarData:
  """Loads all of CIFAR-10 from its JPEG files (quality 75), after checking.

  The file's sha256 is checked every time. Decoding the 60,000 JPEGs with
  Pillow takes about 15 s, so the decoded arrays are cached in `cache_dir`
  under a name holding the file's sha256 (so another file never reuses the
  cache), written atomically; an invalid cache is decoded again, and an
  unwritable cache directory only means no caching. The pixels differ
  slightly from the original CIFAR-10 (lossy JPEG).

  Args:
    data_dir: the root data directory holding `cifar10-jpeg/`; `None` means
      `$EXTRAP_OPTAX_DATA_DIR`.
    cache_dir: where to cache the decoded arrays; `None` means
      `$XDG_CACHE_HOME/extrap_optax`, else `~/.cache/extrap_optax`.

  Returns:
    The 50,000 train images (5,000 per class) and the 10,000 test images,
    sorted by class, with the CIFAR-10 normalisation constants. The first
    1,000 train images of each class and the test images are exactly those
    of `load_cifar10_jpeg_subset`.

  Raises:
    MissingDataError: the directory or the file is missing.
    ChecksumError: the file has another sha256.
    ValueError: the file's arrays are inconsistent (counts, offsets, labels)
      or a JPEG does not decode to a 32x32 image.
    ImportError: decoding is needed and Pillow is not installed.
  """
  directory = common.resolve_data_dir(data_dir, JPEG_SUBDIR,
                                      JPEG_FULL_CONTENTS)
  path = directory / JPEG_FULL_FILE
  actual = file_sha256(path)
  if actual != JPEG_FULL_SHA256:
    raise common.ChecksumError(
        f"Checksum mismatch for {path} (sha256 of the file, "
        f"{path.stat().st_size} bytes): expected {JPEG_FULL_SHA256}, actual "
        f"{actual}. The file is corrupt or not the expected version; replace "
        f"it with the original {JPEG_FULL_FILE} (18,386,001 bytes, see the "
        f"data directory's README), or remove it to use the subset "
        f"{JPEG_FILE} (load_cifar10_jpeg_subset) instead.")
  cache = _cache_file(cache_dir, actual)
  arrays = _read_cache(cache, actual)
  if arrays is None:
    arrays = _decode_jpeg_full(path)
    _check_decoded(arrays, str(path))
    _write_cache(cache, arrays, actual)
  mean, std = STATS["cifar10"]
  return CifarData(arrays["train_images"], arrays["train_labels"],
                   arrays["test_images"], arrays["test_labels"],
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
