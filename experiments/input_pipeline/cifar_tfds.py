"""CIFAR-10/100 in memory (`CifarData`), and its tfds source.

Sources, all giving `CifarData` (uint8 NHWC images, int32 labels):

* `load_cifar_tfds("cifar10" | "cifar100")`: the tfds builder `CifarBinary`
  (configs `cifar10`, `cifar100`), prepared as array_record and read with
  `builder.as_data_source`; neither step needs TensorFlow. It downloads the
  original binary archive (the URL and checksum of the stock tfds builders,
  registered in `checksums.tsv`), or takes it from a manual directory offline,
  and stores the raw uint8 pixels, so the images are exactly those of the
  stock `cifar10`/`cifar100` builders (which PNG-encode the same archive with
  `tf.image.encode_png`) without their TensorFlow dependency.
The offline JPEG sources are in `experiments.input_pipeline.cifar_jpeg`:

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

The on-device training pipeline is `experiments.input_pipeline.cifar`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tarfile
from typing import Mapping

import numpy as np
import requests
import tensorflow_datasets as tfds

from experiments.input_pipeline import common

IMAGE_SHAPE = (32, 32, 3)

# The paper's normalisation constants (App. C), RGB in [0, 1] scale.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

# The offline JPEG files (`cifar_jpeg`), under $EXTRAP_OPTAX_DATA_DIR.
JPEG_SUBDIR = "cifar10-jpeg"
JPEG_FILE = "cifar10_jpeg_subset.npz"
JPEG_FULL_FILE = "cifar10_jpeg_full.npz"

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
