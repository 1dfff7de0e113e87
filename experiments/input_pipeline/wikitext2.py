"""WikiText-2 (word level, pytorch/examples files) for K-worker LSTM training.

Two ways in, sharing the parsing code (`read_lines`, `tokenize_lines`):

* `load_wikitext2(data_dir)`: reads `<data_dir>/wikitext-2/{train,valid,test}
  .txt.gz` directly and returns the id streams and the vocabulary. This is all
  the language model needs.
* `Wikitext2`: a tfds `GeneratorBasedBuilder` (one example per line) that
  downloads the pytorch/examples files, or reads the same .gz files from a
  manual directory offline. Preparing it as array_record and reading it with
  `tfds.data_source` works without TensorFlow; see `prepare_wikitext2`.

The id streams are cut into K*B columns as in pytorch/examples `batchify`;
`LMBatcher` hands worker k its B columns in BPTT segments.
"""

from __future__ import annotations

import io
from typing import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from experiments.input_pipeline import common

SUBDIR = "wikitext-2"
SPLITS = ("train", "validation", "test")
EOS = "<eos>"
BPTT = 35

# Manual-dir file names (gzip -9 -n of the originals).
FILES = {
    "train": "train.txt.gz",
    "validation": "valid.txt.gz",
    "test": "test.txt.gz",
}
_URL_ROOT = ("https://raw.githubusercontent.com/pytorch/examples/main/"
             "word_language_model/data/wikitext-2/")
URLS = {
    "train": _URL_ROOT + "train.txt",
    "validation": _URL_ROOT + "valid.txt",
    "test": _URL_ROOT + "test.txt",
}
# sha256 of the uncompressed originals: the downloads are the originals and
# the manual .gz files decompress to them, so one table checks both.
SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "validation":
        "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
_CONTENTS = {
    "train": "gzip of pytorch/examples wikitext-2 train.txt, 36,718 lines",
    "validation": "gzip of pytorch/examples wikitext-2 valid.txt, 3,760 lines",
    "test": "gzip of pytorch/examples wikitext-2 test.txt, 4,358 lines",
}
# Manual file -> description, for the missing-file errors.
MANUAL_CONTENTS = {FILES[s]: _CONTENTS[s] for s in SPLITS}

_CITATION = """\
@article{merity2016pointer,
  title={Pointer Sentinel Mixture Models},
  author={Merity, Stephen and Xiong, Caiming and Bradbury, James and
          Socher, Richard},
  journal={arXiv preprint arXiv:1609.07843},
  year={2016}
}
"""


def read_lines(path: common.PathLike, sha256: str) -> list[str]:
  """The lines of a WikiText-2 file (plain or gzip) after checking its sha256.

  Args:
    path: the file.
    sha256: expected sha256 of the uncompressed contents.

  Returns:
    The lines without their line ends.

  Raises:
    ChecksumError: the uncompressed contents have another sha256.
  """
  data = common.read_bytes(path)
  common.check_sha256(data, sha256, path, what="uncompressed contents")
  # A text-mode stream splits lines exactly as pytorch/examples' open() does.
  with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f]


def tokenize_lines(lines: Sequence[str]) -> list[list[str]]:
  """pytorch/examples tokens: `line.split() + ['<eos>']`, empty lines too."""
  return [line.split() + [EOS] for line in lines]


def load_wikitext2(
    data_dir: common.PathLike | None = None,
    *,
    sha256: Mapping[str, str] = SHA256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, common.Vocab]:
  """Loads the three id streams and the vocabulary from the manual files.

  Args:
    data_dir: the root data directory holding `wikitext-2/`; `None` means
      `$EXTRAP_OPTAX_DATA_DIR`.
    sha256: expected sha256 of each split's uncompressed contents.

  Returns:
    `(train_ids, valid_ids, test_ids, vocab)`: int32 streams of 2,088,628 /
    217,646 / 245,569 tokens and a 33,278-word vocabulary with ids by first
    occurrence over train, valid, test (`<eos>`=0, `=`=1, `Valkyria`=2).

  Raises:
    MissingDataError: the directory or a file is missing.
    ChecksumError: a file has the wrong contents.
  """
  directory = common.resolve_data_dir(data_dir, SUBDIR, MANUAL_CONTENTS)
  tokens = [tokenize_lines(read_lines(directory / FILES[s], sha256[s]))
            for s in SPLITS]
  vocab = common.Vocab.by_first_occurrence(
      sentence for split in tokens for sentence in split)
  streams = [np.asarray(vocab.encode(t for s in split for t in s), np.int32)
             for split in tokens]
  return streams[0], streams[1], streams[2], vocab


class Wikitext2(tfds.core.GeneratorBasedBuilder):
  """WikiText-2 as in pytorch/examples: one example per line of text.

  Examples keep the file order (`disable_shuffling`), so concatenating
  `tokenize_lines` over a split's examples gives the language-model stream.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "pytorch/examples word_language_model files."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional. For offline use put train.txt.gz, valid.txt.gz and "
      "test.txt.gz (gzip of the pytorch/examples word_language_model/data/"
      "wikitext-2 files) in the manual directory, e.g. "
      "$EXTRAP_OPTAX_DATA_DIR/wikitext-2. Without it the files are downloaded.")
  SHA256: Mapping[str, str] = SHA256

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="WikiText-2, word level, one example per line.",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        homepage=("https://github.com/pytorch/examples/tree/main/"
                  "word_language_model"),
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = common.manual_dir_or_none(dl_manager)
    if manual_dir is None:
      paths = dl_manager.download(URLS)
    else:
      directory = common.resolve_data_dir(
          manual_dir.parent, manual_dir.name,
          MANUAL_CONTENTS)
      paths = {s: directory / FILES[s] for s in SPLITS}
    return {s: self._generate_examples(paths[s], self.SHA256[s])
            for s in SPLITS}

  def _generate_examples(self, path: common.PathLike, sha256: str):
    for i, line in enumerate(read_lines(path, sha256)):
      yield i, {"text": line}


def prepare_wikitext2(
    tfds_data_dir: common.PathLike,
    data_dir: common.PathLike | None = None,
    *,
    download: bool = False,
    builder_cls: type[Wikitext2] = Wikitext2,
) -> Wikitext2:
  """Prepares the tfds dataset (array_record, no TensorFlow needed).

  Args:
    tfds_data_dir: where tfds writes the prepared dataset.
    data_dir: root holding `wikitext-2/` for offline preparation; `None` means
      `$EXTRAP_OPTAX_DATA_DIR`. Ignored when `download` is true.
    download: download from the pytorch/examples URLs instead.
    builder_cls: the builder class (tests pass a subclass with other
      checksums).

  Returns:
    The prepared builder; read it with `builder.as_data_source(split)`.
  """
  manual_dir = None if download else common.resolve_data_dir(
      data_dir, SUBDIR, MANUAL_CONTENTS)
  builder = builder_cls(data_dir=str(tfds_data_dir),
                        file_format="array_record")
  common.prepare_builder(builder, manual_dir)
  return builder


class LMBatcher:
  """BPTT batches of a batchified token stream, addressable by step.

  A `common.Batcher`.

  The stream is trimmed to a multiple of K*B tokens and laid out as
  pytorch/examples `batchify` does: `data = ids.reshape(K*B, T).T`, shape
  (T, K*B), so column c is the contiguous span `ids[c*T:(c+1)*T]`. Worker k
  owns columns `[k*B, (k+1)*B)`, i.e. the contiguous, disjoint span
  `ids[k*B*T:(k+1)*B*T]`. Step i reads rows `[i*bptt, (i+1)*bptt)` as inputs
  and the rows one further as targets. The last, shorter segment is dropped
  so every batch has the static shape (K, B, bptt) (one compiled step
  function); it holds fewer than bptt of each column's T tokens.

  There is no shuffling: a hidden state carried between consecutive steps
  continues the same text, and a new pass starts at `step % steps_per_epoch
  == 0`.
  """

  def __init__(self, ids: np.ndarray, num_workers: int, local_batch: int,
               bptt: int = BPTT):
    """Lays out the stream.

    Args:
      ids: 1-D token-id stream.
      num_workers: K.
      local_batch: B, columns per worker.
      bptt: segment length.

    Raises:
      ValueError: the stream is too short for one segment per column.
    """
    if num_workers < 1 or local_batch < 1 or bptt < 1:
      raise ValueError(f"num_workers={num_workers}, local_batch={local_batch} "
                       f"and bptt={bptt} must be positive.")
    ids = np.asarray(ids)
    columns = num_workers * local_batch
    length = ids.shape[0] // columns
    if length < bptt + 1:
      raise ValueError(
          f"A stream of {ids.shape[0]} tokens is too short for K*B = "
          f"{num_workers}*{local_batch} = {columns} columns of at least "
          f"bptt+1 = {bptt + 1} tokens (needs {columns * (bptt + 1)}).")
    self.num_workers = num_workers
    self.local_batch = local_batch
    self.bptt = bptt
    self.data = ids[:length * columns].reshape(columns, length).T
    self.steps_per_epoch = (length - 1) // bptt

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets, each (K, B, bptt), of segment `step % steps`."""
    start = (step % self.steps_per_epoch) * self.bptt
    shape = (self.num_workers, self.local_batch, self.bptt)
    inputs = self.data[start:start + self.bptt].T.reshape(shape)
    targets = self.data[start + 1:start + 1 + self.bptt].T.reshape(shape)
    return inputs, targets


def lm_batches(ids: np.ndarray, num_workers: int, local_batch: int,
               bptt: int = BPTT) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one pass of `(inputs, targets)`, each (K, B, bptt); see LMBatcher."""
  batcher = LMBatcher(ids, num_workers, local_batch, bptt)
  for step in range(batcher.steps_per_epoch):
    yield batcher.batch(step)
