"""Input pipeline tests on the real data in $EXTRAP_OPTAX_DATA_DIR."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import tasks
from experiments.input_pipeline import cifar
from experiments.input_pipeline import cifar_jpeg
from experiments.input_pipeline import multi30k
from experiments.input_pipeline import wikitext2

pytestmark = pytest.mark.data


def test_wikitext2_counts_and_vocab(data_dir):
  train, valid, test, vocab = wikitext2.load_wikitext2(data_dir)
  assert (len(train), len(valid), len(test)) == (2_088_628, 217_646, 245_569)
  assert len(vocab) == 33_278
  assert (vocab["<eos>"], vocab["="], vocab["Valkyria"]) == (0, 1, 2)
  assert max(train.max(), valid.max(), test.max()) == 33_277
  batcher = wikitext2.LMBatcher(train, 24, 64)
  columns = 24 * 64
  assert batcher.steps_per_epoch == (len(train) // columns - 1) // 35
  x, y = batcher.batch(0)
  assert x.shape == y.shape == (24, 64, 35)
  np.testing.assert_array_equal(x[0, 0], train[:35])
  np.testing.assert_array_equal(y[0, 0], train[1:36])


def test_wikitext2_and_multi30k_tfds_builders(data_dir, tmp_path):
  wikitext2.prepare_wikitext2(tmp_path, data_dir)
  lines = tfds.data_source("wikitext2", data_dir=tmp_path, split="train")
  assert len(lines) == 36_718
  tokens = wikitext2.tokenize_lines([e["text"].decode() for e in lines])
  assert sum(len(t) for t in tokens) == 2_088_628
  assert len(tfds.data_source("wikitext2", data_dir=tmp_path,
                              split="test")) == 4_358
  multi30k.prepare_multi30k(tmp_path, data_dir)
  counts = {s: len(tfds.data_source("multi30k", data_dir=tmp_path, split=s))
            for s in multi30k.SPLITS}
  assert counts == {"train": 29_000, "validation": 1_014, "test": 1_000}
  first = tfds.data_source("multi30k", data_dir=tmp_path, split="train")[0]
  assert first["en"].decode() == (
      "Two young, White males are outside near many bushes.")


def test_multi30k_counts_and_alignment(data_dir):
  data = multi30k.load_multi30k(data_dir)
  assert {s: (len(en), len(de)) for s, (en, de) in data.items()} == {
      "train": (29_000, 29_000), "validation": (1_014, 1_014),
      "test": (1_000, 1_000)}
  en, de = data["train"]
  assert en[0] == "Two young, White males are outside near many bushes."
  assert de[0] == ("Zwei junge weiße Männer sind im Freien in der Nähe "
                   "vieler Büsche.")


def test_multi30k_translation_data(data_dir):
  data = multi30k.load_translation_data(data_dir)
  assert 3_000 < len(data.src_vocab) < 4_000
  assert 3_000 < len(data.tgt_vocab) < 4_500
  assert data.tgt_vocab.itos[:4] == multi30k.SPECIALS
  src, tgt = data.ids["train"]
  assert src[0][-1] == multi30k.EOS_ID and tgt[0][0] == multi30k.BOS_ID
  assert data.tgt_vocab.decode(tgt[0][1:4].tolist()) == ["zwei", "junge",
                                                         "weiße"]
  batcher = multi30k.TranslationBatcher(src, tgt, 20, 16, seed=0)
  s, t = batcher.batch(0)
  assert s.shape[:2] == t.shape[:2] == (20, 16)


def test_cifar10_jpeg_subset(data_dir):
  data = cifar_jpeg.load_cifar10_jpeg_subset(data_dir)
  assert data.train_images.shape == data.test_images.shape == (10_000, 32,
                                                               32, 3)
  assert data.train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(data.train_labels), [1_000] * 10)
  np.testing.assert_array_equal(np.bincount(data.test_labels), [1_000] * 10)
  batches = cifar.DeviceCifar(data.train_images, data.train_labels, 8, 256,
                              seed=0, augment_images=False)
  x = np.concatenate([np.asarray(batches.batch(s)[0]).reshape(-1, 32, 32, 3)
                      for s in range(batches.steps_per_epoch)])
  mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
  np.testing.assert_allclose(mean, 0.0, atol=0.03)
  # The paper's std constants are smaller than the pixel std (0.246, 0.244,
  # 0.262 here), so normalised pixels have std pixel_std / paper_std.
  np.testing.assert_allclose(
      std, np.array([0.2460, 0.2441, 0.2616]) / np.array(data.std), atol=0.02)


def test_cifar10_jpeg_full_and_subset_prefix(data_dir, tmp_path):
  cache_dir = tmp_path / "cache"
  data = cifar_jpeg.load_cifar10_jpeg_full(data_dir, cache_dir=cache_dir)
  assert data.train_images.shape == (50_000, 32, 32, 3)
  assert data.test_images.shape == (10_000, 32, 32, 3)
  assert data.train_images.dtype == data.test_images.dtype == np.uint8
  assert data.train_labels.dtype == data.test_labels.dtype == np.int32
  assert data.train_labels.shape == (50_000,)
  assert data.test_labels.shape == (10_000,)
  np.testing.assert_array_equal(np.bincount(data.train_labels), [5_000] * 10)
  np.testing.assert_array_equal(np.bincount(data.test_labels), [1_000] * 10)
  assert (data.num_classes, data.mean, data.std) == (10, *cifar_jpeg.STATS[
      "cifar10"])
  assert len(list(cache_dir.glob(
      f"*{cifar_jpeg.JPEG_FULL_SHA256}*.npz"))) == 1
  # The subset is the first 1,000 train images of each class, in order, and
  # the same test set.
  subset = cifar_jpeg.load_cifar10_jpeg_subset(data_dir)
  for c in range(10):
    np.testing.assert_array_equal(
        data.train_images[data.train_labels == c][:1_000],
        subset.train_images[subset.train_labels == c])
  np.testing.assert_array_equal(data.test_images, subset.test_images)
  np.testing.assert_array_equal(data.test_labels, subset.test_labels)
  # The small presets' 10,000-image prefix of the full set is the subset.
  images, labels = tasks.class_balanced_prefix(data.train_images,
                                               data.train_labels, 10_000)
  np.testing.assert_array_equal(images, subset.train_images)
  np.testing.assert_array_equal(labels, subset.train_labels)
  # The second load comes from the cache and equals the first.
  again = cifar_jpeg.load_cifar10_jpeg_full(data_dir, cache_dir=cache_dir)
  for field in ("train_images", "train_labels", "test_images", "test_labels"):
    np.testing.assert_array_equal(getattr(again, field), getattr(data, field))
