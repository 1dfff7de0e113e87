"""Multi30k task 1 (English -> German) for K-worker Transformer training.

* `load_multi30k(data_dir)` reads `<data_dir>/multi30k/*.{en,de}.gz` (the raw,
  cased, untokenized files of github.com/multi30k/dataset) after checking
  their sha256, and returns aligned sentence lists per split.
* `Multi30k` is a tfds `GeneratorBasedBuilder` (one example per sentence pair)
  that downloads the same .gz files or reads them from a manual directory;
  `prepare_multi30k` prepares it as array_record without TensorFlow.
* Sentences are tokenized by `tokenizer.Tokenizer` (lowercased Moses tokens)
  and decoded outputs scored by `bleu.bleu`.
* `TranslationBatcher` makes length-bucketed global batches of K*B pairs,
  split into (K, B, L) padded arrays, reshuffled every epoch.

Splits are named `train`, `validation` and `test` (= `test_2016_flickr`, the
standard Multi30k test set).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from experiments.input_pipeline import common
from experiments.input_pipeline.tokenizer import Tokenizer

SUBDIR = "multi30k"
SPLITS = ("train", "validation", "test")
LANGS = ("en", "de")
FILE_STEMS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
MIN_FREQ = 5

_URL_ROOT = ("https://raw.githubusercontent.com/multi30k/dataset/master/data/"
             "task1/raw/")
# sha256 of the .gz files as published (downloads and manual files alike).
SHA256 = {
    "train.en.gz":
        "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.de.gz":
        "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "val.en.gz":
        "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.de.gz":
        "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "test_2016_flickr.en.gz":
        "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.de.gz":
        "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
}
_LINES = {"train": "29,000", "validation": "1,014", "test": "1,000"}

_CITATION = """\
@inproceedings{elliott2016multi30k,
  title={Multi30K: Multilingual English-German Image Descriptions},
  author={Elliott, Desmond and Frank, Stella and Sima'an, Khalil and
          Specia, Lucia},
  booktitle={Proceedings of the 5th Workshop on Vision and Language},
  pages={70--74},
  year={2016}
}
"""


def file_name(split: str, lang: str) -> str:
  """The .gz file of one split and language, e.g. `val.de.gz`."""
  return f"{FILE_STEMS[split]}.{lang}.gz"


def expected_files() -> dict[str, str]:
  """Manual file -> description, for the missing-file errors."""
  return {file_name(s, lang): f"gzip, {_LINES[s]} raw {lang} sentences"
          for s in SPLITS for lang in LANGS}


def read_sentences(path: common.PathLike, sha256: str) -> list[str]:
  """The lines of a Multi30k file after checking the file's sha256.

  Args:
    path: a .gz file (or its plain-text contents).
    sha256: expected sha256 of the file as stored.

  Returns:
    The sentences, without line ends.

  Raises:
    ChecksumError: the file has another sha256.
  """
  data = pathlib.Path(path).read_bytes()
  common.check_sha256(data, sha256, path)
  text = common.maybe_decompress(data).decode("utf-8")
  return text.removesuffix("\n").split("\n")


def _read_pair(paths: Mapping[str, common.PathLike],
               sha256: Mapping[str, str], split: str) -> tuple[list[str],
                                                               list[str]]:
  en, de = (read_sentences(paths[lang], sha256[file_name(split, lang)])
            for lang in LANGS)
  if len(en) != len(de):
    raise ValueError(f"Multi30k {split}: {paths['en']} has {len(en)} lines "
                     f"but {paths['de']} has {len(de)}; they must align.")
  return en, de


def load_multi30k(
    data_dir: common.PathLike | None = None,
    *,
    sha256: Mapping[str, str] = SHA256,
) -> dict[str, tuple[list[str], list[str]]]:
  """Loads the raw sentence pairs from the manual files.

  Args:
    data_dir: the root data directory holding `multi30k/`; `None` means
      `$EXTRAP_OPTAX_DATA_DIR`.
    sha256: expected sha256 of each .gz file, by file name.

  Returns:
    split -> `(en, de)` aligned sentence lists (29,000 / 1,014 / 1,000 pairs).

  Raises:
    MissingDataError: the directory or a file is missing.
    ChecksumError: a file has the wrong contents.
  """
  directory = common.resolve_data_dir(data_dir, SUBDIR, expected_files())
  return {s: _read_pair({lang: directory / file_name(s, lang)
                         for lang in LANGS}, sha256, s) for s in SPLITS}


class Multi30k(tfds.core.GeneratorBasedBuilder):
  """Multi30k task 1, raw en/de sentence pairs in file order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "multi30k/dataset data/task1/raw files."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional. For offline use put {train,val,test_2016_flickr}.{en,de}.gz "
      "from github.com/multi30k/dataset data/task1/raw in the manual "
      "directory, e.g. $EXTRAP_OPTAX_DATA_DIR/multi30k. Without it the files "
      "are downloaded.")
  SHA256: Mapping[str, str] = SHA256

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Multi30k task 1, English-German, raw cased text.",
        features=tfds.features.FeaturesDict({
            "en": tfds.features.Text(),
            "de": tfds.features.Text(),
        }),
        supervised_keys=("en", "de"),
        homepage="https://github.com/multi30k/dataset",
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = common.manual_dir_or_none(dl_manager)
    if manual_dir is None:
      paths = dl_manager.download(
          {s: {lang: _URL_ROOT + file_name(s, lang) for lang in LANGS}
           for s in SPLITS})
    else:
      directory = common.resolve_data_dir(manual_dir.parent, manual_dir.name,
                                          expected_files())
      paths = {s: {lang: directory / file_name(s, lang) for lang in LANGS}
               for s in SPLITS}
    return {s: self._generate_examples(paths[s], s) for s in SPLITS}

  def _generate_examples(self, paths: Mapping[str, common.PathLike],
                         split: str):
    en, de = _read_pair(paths, self.SHA256, split)
    for i, (e, d) in enumerate(zip(en, de)):
      yield i, {"en": e, "de": d}


def prepare_multi30k(
    tfds_data_dir: common.PathLike,
    data_dir: common.PathLike | None = None,
    *,
    download: bool = False,
    builder_cls: type[Multi30k] = Multi30k,
) -> Multi30k:
  """Prepares the tfds dataset (array_record, no TensorFlow needed).

  Args:
    tfds_data_dir: where tfds writes the prepared dataset.
    data_dir: root holding `multi30k/` for offline preparation; `None` means
      `$EXTRAP_OPTAX_DATA_DIR`. Ignored when `download` is true.
    download: download from github.com/multi30k/dataset instead.
    builder_cls: the builder class (tests pass a subclass with other
      checksums).

  Returns:
    The prepared builder; read it with `builder.as_data_source(split)`.
  """
  manual_dir = None if download else common.resolve_data_dir(
      data_dir, SUBDIR, expected_files())
  builder = builder_cls(data_dir=str(tfds_data_dir),
                        file_format="array_record")
  common.prepare_builder(builder, manual_dir)
  return builder


def build_vocab(tokenized: Sequence[Sequence[str]],
                min_freq: int = MIN_FREQ) -> common.Vocab:
  """`<pad>`=0, `<unk>`=1, `<bos>`=2, `<eos>`=3, then tokens seen >= min_freq."""
  return common.Vocab.by_frequency(tokenized, SPECIALS, UNK, min_freq)


@dataclasses.dataclass(frozen=True)
class TranslationData:
  """Multi30k, tokenized and encoded for en -> de.

  Attributes:
    text: split -> `(en, de)` raw sentences.
    src_tokenizer: English tokenizer.
    tgt_tokenizer: German tokenizer.
    src_vocab: English vocabulary (built on train).
    tgt_vocab: German vocabulary (built on train).
    ids: split -> `(src, tgt)` id sequences; a source is `tokens + <eos>`, a
      target `<bos> + tokens + <eos>` (decoder input `tgt[:-1]`, labels
      `tgt[1:]`).
  """
  text: dict[str, tuple[list[str], list[str]]]
  src_tokenizer: Tokenizer
  tgt_tokenizer: Tokenizer
  src_vocab: common.Vocab
  tgt_vocab: common.Vocab
  ids: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]


def load_translation_data(data_dir: common.PathLike | None = None, *,
                          lowercase: bool = True,
                          min_freq: int = MIN_FREQ) -> TranslationData:
  """Loads, tokenizes and encodes all splits (about 2 s).

  Args:
    data_dir: root data directory (see `load_multi30k`).
    lowercase: lowercase before tokenizing.
    min_freq: vocabulary minimum count on train.

  Returns:
    The encoded data with its tokenizers and vocabularies.
  """
  text = load_multi30k(data_dir)
  src_tok, tgt_tok = Tokenizer("en", lowercase), Tokenizer("de", lowercase)
  tokens = {s: ([src_tok.tokenize(x) for x in en],
                [tgt_tok.tokenize(x) for x in de])
            for s, (en, de) in text.items()}
  src_vocab = build_vocab(tokens["train"][0], min_freq)
  tgt_vocab = build_vocab(tokens["train"][1], min_freq)
  ids = {s: ([np.asarray(src_vocab.encode(t) + [EOS_ID], np.int32)
              for t in src],
             [np.asarray([BOS_ID] + tgt_vocab.encode(t) + [EOS_ID], np.int32)
              for t in tgt])
         for s, (src, tgt) in tokens.items()}
  return TranslationData(text, src_tok, tgt_tok, src_vocab, tgt_vocab, ids)


def pad_batch(sequences: Sequence[np.ndarray], pad_multiple: int) -> np.ndarray:
  """Stacks sequences into (n, L) int32, padded with `<pad>`.

  L is the longest length rounded up to `pad_multiple`, which bounds the
  number of distinct shapes a jitted step function is compiled for.
  """
  longest = max(len(s) for s in sequences)
  length = -(-longest // pad_multiple) * pad_multiple
  out = np.full((len(sequences), length), PAD_ID, np.int32)
  for row, seq in zip(out, sequences):
    row[:len(seq)] = seq
  return out


class TranslationBatcher:
  """Length-bucketed (K, B, L) batches, addressable by the global step.

  A `common.Batcher`.

  Each epoch (seeded by `(seed, epoch)`): shuffle all pairs and drop the
  `N mod K*B` that come last, cut the rest into pools of `pool_batches`
  global batches, sort each pool by (source length, target length), cut it
  into global batches of K*B similar-length pairs, shuffle each batch's
  members (so no worker always gets the shortest) and the batch order. A
  global batch becomes worker k's rows `[k*B, (k+1)*B)`, padded to one L per
  batch for sources and one for targets.
  """

  def __init__(self, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray],
               num_workers: int, local_batch: int, seed: int, *,
               pool_batches: int = 100, pad_multiple: int = 8):
    """Sets up the batcher.

    Args:
      src: source id sequences.
      tgt: target id sequences, aligned with `src`.
      num_workers: K.
      local_batch: B, pairs per worker.
      seed: shuffling seed.
      pool_batches: global batches per length-sorting pool.
      pad_multiple: pad lengths up to a multiple of this.

    Raises:
      ValueError: misaligned data or fewer than K*B pairs.
    """
    if len(src) != len(tgt):
      raise ValueError(f"{len(src)} sources but {len(tgt)} targets.")
    if num_workers < 1 or local_batch < 1:
      raise ValueError(f"num_workers={num_workers} and "
                       f"local_batch={local_batch} must be positive.")
    self.global_batch = num_workers * local_batch
    self.steps_per_epoch = len(src) // self.global_batch
    if self.steps_per_epoch == 0:
      raise ValueError(f"{len(src)} pairs are fewer than one global batch of "
                       f"K*B = {num_workers}*{local_batch} = "
                       f"{self.global_batch}.")
    self.src, self.tgt = list(src), list(tgt)
    self.num_workers, self.local_batch = num_workers, local_batch
    self.seed = seed
    self.pool_batches = pool_batches
    self.pad_multiple = pad_multiple
    self._src_len = np.array([len(s) for s in src])
    self._tgt_len = np.array([len(t) for t in tgt])
    self._plan_epoch, self._plan = -1, np.zeros((0, 0), np.int64)

  def epoch_plan(self, epoch: int) -> np.ndarray:
    """(steps_per_epoch, K*B) example indices of every batch of an epoch."""
    if epoch != self._plan_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(len(self.src))[
          :self.steps_per_epoch * self.global_batch]
      pool = self.pool_batches * self.global_batch
      for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        order[start:start + pool] = chunk[np.lexsort(
            (self._tgt_len[chunk], self._src_len[chunk]))]
      batches = order.reshape(self.steps_per_epoch, self.global_batch)
      batches = rng.permuted(batches, axis=1)[
          rng.permutation(self.steps_per_epoch)]
      self._plan_epoch, self._plan = epoch, batches
    return self._plan

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Sources (K, B, Ls) and targets (K, B, Lt), int32, padded with 0."""
    epoch, index = divmod(step, self.steps_per_epoch)
    members = self.epoch_plan(epoch)[index]
    shape = (self.num_workers, self.local_batch, -1)
    src = pad_batch([self.src[i] for i in members], self.pad_multiple)
    tgt = pad_batch([self.tgt[i] for i in members], self.pad_multiple)
    return src.reshape(shape), tgt.reshape(shape)


def eval_batches(
    src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], batch_size: int,
    pad_multiple: int = 8,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields `(src, tgt, mask)` in data order, `batch_size` rows each.

  The last batch is filled with all-`<pad>` rows whose `mask` is False, so
  every batch has `batch_size` rows.
  """
  for start in range(0, len(src), batch_size):
    n = min(batch_size, len(src) - start)
    filler = [np.zeros(1, np.int32)] * (batch_size - n)
    mask = np.arange(batch_size) < n
    yield (pad_batch(list(src[start:start + n]) + filler, pad_multiple),
           pad_batch(list(tgt[start:start + n]) + filler, pad_multiple), mask)
