"""The offline CIFAR-10 JPEG files, decoded (Pillow) and cached.

* `load_cifar10_jpeg_full(data_dir)`: the full offline CIFAR-10 as JPEG files,
  `$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg/cifar10_jpeg_full.npz` (50,000 train,
  10,000 test), decoded and cached decoded under `$XDG_CACHE_HOME/extrap_optax`
  (default `~/.cache/extrap_optax`).
* `load_cifar10_jpeg_subset(data_dir)`: the JPEG-decoded subset in
  `$EXTRAP_OPTAX_DATA_DIR/cifar10-jpeg/cifar10_jpeg_subset.npz` (10,000
  train, 10,000 test): the first 1,000 train images of each class of the full
  set, and its test set.

Both were encoded at JPEG quality 75: their pixels differ slightly from the
original CIFAR-10 (`cifar_tfds.load_cifar_tfds` has the original ones).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from experiments.input_pipeline import common
from experiments.input_pipeline.cifar_tfds import CifarData
from experiments.input_pipeline.cifar_tfds import IMAGE_SHAPE
from experiments.input_pipeline.cifar_tfds import JPEG_FILE
from experiments.input_pipeline.cifar_tfds import JPEG_FULL_FILE
from experiments.input_pipeline.cifar_tfds import JPEG_SUBDIR
from experiments.input_pipeline.cifar_tfds import NUM_CLASSES
from experiments.input_pipeline.cifar_tfds import STATS

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
