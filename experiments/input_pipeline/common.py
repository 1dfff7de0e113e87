"""Shared helpers: data-directory resolution, checksums, vocabularies, tfds."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import os
import pathlib
from typing import Any, Iterable, Mapping, Protocol, Sequence

import tensorflow_datasets as tfds

DATA_DIR_ENV = "EXTRAP_OPTAX_DATA_DIR"

PathLike = str | os.PathLike[str]


class Batcher(Protocol):
  """The one contract of the training-batch makers (`cifar.DeviceCifar`,
  `wikitext2.LMBatcher`, `multi30k.TranslationBatcher`).

  `batch(step)` is the global step's batch, (K, B, ...) arrays with one row
  per worker, and a pure function of the run's seed and `step`, so that a
  resumed run sees the same data as an uninterrupted one. The task places
  it on the workers' devices (`worker_arrays.place`), unless the batcher
  builds it there (`cifar.DeviceCifar`, whose batches are already placed).
  """

  steps_per_epoch: int

  def batch(self, step: int) -> Any:
    """The (K, B, ...) batch of global step `step`."""


class MissingDataError(FileNotFoundError):
  """The data directory or one of its files is missing."""


class ChecksumError(ValueError):
  """A data file does not have the expected sha256."""


def resolve_data_dir(data_dir: PathLike | None, subdir: str,
                     expected: Mapping[str, str]) -> pathlib.Path:
  """Returns `<data_dir>/<subdir>` after checking that all files are there.

  Args:
    data_dir: the root data directory; `None` means `$EXTRAP_OPTAX_DATA_DIR`.
    subdir: the dataset's sub-directory, e.g. `"wikitext-2"`.
    expected: file name -> description of its contents, used in the error.

  Returns:
    The dataset directory.

  Raises:
    MissingDataError: the root is unset or missing, or a file is missing.
  """
  if data_dir is None:
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
      raise MissingDataError(
          f"No data directory given and ${DATA_DIR_ENV} is not set. Set "
          f"{DATA_DIR_ENV} to the directory that holds '{subdir}/' (files "
          f"{', '.join(sorted(expected))}) or pass data_dir explicitly.")
    data_dir = value
  directory = pathlib.Path(data_dir) / subdir
  if not directory.is_dir():
    raise MissingDataError(
        f"Data directory {directory} does not exist. It should contain "
        + _describe(expected) + f". Set {DATA_DIR_ENV} (or data_dir) to the "
        f"directory that holds '{subdir}/'.")
  missing = [name for name in expected if not (directory / name).is_file()]
  if missing:
    raise MissingDataError(
        f"Data directory {directory} is incomplete: missing "
        + _describe({name: expected[name] for name in missing})
        + ". It should contain " + _describe(expected) + ".")
  return directory


def _describe(files: Mapping[str, str]) -> str:
  return "; ".join(f"{name} ({what})" for name, what in files.items())


def maybe_decompress(data: bytes) -> bytes:
  """Decompresses gzip data, passes anything else through.

  The magic bytes decide rather than a file name because tfds stores
  downloads under hashed names.
  """
  return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_bytes(path: PathLike) -> bytes:
  """The file's contents, decompressed when it is gzip."""
  return maybe_decompress(pathlib.Path(path).read_bytes())


def check_sha256(data: bytes, expected: str, path: PathLike,
                 what: str = "file") -> None:
  """Raises `ChecksumError` naming the file when `data` has another sha256.

  Args:
    data: the bytes to hash.
    expected: the expected hex sha256.
    path: the file the bytes came from, for the error message.
    what: what was hashed, for the error message.
  """
  actual = hashlib.sha256(data).hexdigest()
  if actual != expected:
    raise ChecksumError(
        f"Checksum mismatch for {path} (sha256 of the {what}): expected "
        f"{expected}, actual {actual}. The file is corrupt or not the "
        "expected version; replace it with the original.")


@dataclasses.dataclass(frozen=True)
class Vocab:
  """A token <-> id mapping.

  Attributes:
    itos: the tokens, indexed by id.
    unk: the token that unknown tokens map to, or `None` when unknown tokens
      are an error.
  """
  itos: tuple[str, ...]
  unk: str | None = None
  stoi: dict[str, int] = dataclasses.field(init=False, repr=False,
                                           compare=False)

  def __post_init__(self):
    object.__setattr__(self, "stoi",
                       {token: i for i, token in enumerate(self.itos)})
    if len(self.stoi) != len(self.itos):
      raise ValueError("Vocabulary tokens are not unique.")

  def __len__(self) -> int:
    return len(self.itos)

  def __getitem__(self, token: str) -> int:
    return self.stoi[token]

  def encode(self, tokens: Iterable[str]) -> list[int]:
    """Maps tokens to ids (unknown tokens to `unk` when it is set)."""
    if self.unk is None:
      return [self.stoi[t] for t in tokens]
    unk_id = self.stoi[self.unk]
    return [self.stoi.get(t, unk_id) for t in tokens]

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Maps ids to tokens."""
    return [self.itos[i] for i in ids]

  @classmethod
  def by_first_occurrence(cls, sentences: Iterable[Sequence[str]]) -> Vocab:
    """Ids in order of first occurrence (the pytorch/examples convention)."""
    return cls(tuple(dict.fromkeys(t for s in sentences for t in s)))

  @classmethod
  def by_frequency(cls, sentences: Iterable[Sequence[str]],
                   specials: Sequence[str], unk: str,
                   min_freq: int) -> Vocab:
    """Specials first, then tokens with count >= `min_freq`.

    Ordered by decreasing count, ties alphabetically, so the ids do not depend
    on the order of the data.
    """
    counts = collections.Counter(t for s in sentences for t in s)
    kept = sorted((t for t, n in counts.items()
                   if n >= min_freq and t not in specials),
                  key=lambda t: (-counts[t], t))
    return cls(tuple(specials) + tuple(kept), unk=unk)


def prepare_builder(builder: tfds.core.DatasetBuilder,
                    manual_dir: pathlib.Path | None) -> None:
  """Runs `builder.download_and_prepare` from a manual dir or the URLs.

  Args:
    builder: a tfds builder from this package.
    manual_dir: directory with the dataset's files; `None` downloads them.
  """
  config = (tfds.download.DownloadConfig(manual_dir=str(manual_dir))
            if manual_dir is not None else None)
  builder.download_and_prepare(download_config=config)


def manual_dir_or_none(
    dl_manager: tfds.download.DownloadManager) -> pathlib.Path | None:
  """The tfds manual dir when it exists and is non-empty, else `None`.

  tfds signals a missing or empty manual dir with an AssertionError; a
  builder then falls back to downloading from its URLs.
  """
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError:
    return None
