"""Synthetic data of each task's shapes, learnable but random (tests, toy runs).

Every generator is seeded by a constant: the same configuration gives the
same data, whatever the run's seed.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from experiments.input_pipeline import cifar_tfds
from experiments.input_pipeline import common
from experiments.input_pipeline import multi30k
from experiments.input_pipeline.tokenizer import Tokenizer


def cifar(config: ml_collections.ConfigDict) -> cifar_tfds.CifarData:
  """Random images whose labels a model can learn (a class-dependent tint)."""
  num_classes = cifar_tfds.NUM_CLASSES[config.data.dataset]
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
  mean, std = cifar_tfds.STATS[config.data.dataset]
  return cifar_tfds.CifarData(train_images, train_labels, test_images, test_labels,
                         num_classes, mean, std)


def token_streams(config: ml_collections.ConfigDict
                  ) -> tuple[np.ndarray, np.ndarray, int]:
  """(train, validation, vocabulary size): a noisy cycle through the
  vocabulary, learnable but not trivial."""
  vocab = config.data.synthetic_vocab_size
  rng = np.random.default_rng(1234)

  def stream(n):
    ids = np.arange(n) % vocab
    noise = rng.random(n) < 0.2
    return np.where(noise, rng.integers(0, vocab, n), ids).astype(np.int32)

  return (stream(config.data.train_size or 4096),
          stream(config.data.eval_size or 512), vocab)


def translation(config: ml_collections.ConfigDict) -> multi30k.TranslationData:
  """A learnable toy translation: the target is the reversed source."""
  words = tuple(f"w{i}" for i in range(config.data.synthetic_vocab_size))
  vocab = common.Vocab(multi30k.SPECIALS + words, unk=multi30k.UNK)
  tokenizer = Tokenizer("de")
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
