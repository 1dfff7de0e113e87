"""Input pipeline tests that need no real data (synthetic and tmp files)."""

import gzip
import hashlib
import io
import pathlib
import tarfile

import jax
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from experiments.input_pipeline import bleu
from experiments.input_pipeline import cifar
from experiments.input_pipeline import cifar_jpeg
from experiments.input_pipeline import cifar_tfds
from experiments.input_pipeline import common
from experiments.input_pipeline import multi30k
from experiments.input_pipeline import tokenizer
from experiments.input_pipeline import wikitext2
from tests import contract

# ----------------------------------------------------------------- CIFAR


def _random_images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3),
                                              dtype=np.uint8)


def _numpy_crop_flip(image: np.ndarray, dy: int, dx: int,
                     flip: bool) -> np.ndarray:
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  out = padded[dy:dy + 32, dx:dx + 32]
  return out[:, ::-1] if flip else out


def test_worker_partitions_disjoint_cover_and_drop_remainder():
  parts = cifar.worker_partitions(103, 4, seed=7)
  assert parts.shape == (4, 25)
  flat = parts.ravel()
  assert len(set(flat.tolist())) == 100  # disjoint, 3 left over dropped
  assert set(flat.tolist()) <= set(range(103))
  np.testing.assert_array_equal(parts, cifar.worker_partitions(103, 4, 7))
  assert not np.array_equal(parts, cifar.worker_partitions(103, 4, 8))


def test_device_cifar_epoch_covers_each_partition_once():
  n, k, b = 200, 4, 12
  data = cifar.DeviceCifar(_random_images(n), np.arange(n) % 10, k, b, seed=3)
  assert data.steps_per_epoch == (n // k) // b == 4
  for epoch in range(2):
    idx = np.stack([np.asarray(data.indices(epoch * data.steps_per_epoch + s))
                    for s in range(data.steps_per_epoch)], axis=1)
    assert idx.shape == (k, data.steps_per_epoch, b)
    for w in range(k):
      drawn = idx[w].ravel()
      assert len(set(drawn.tolist())) == drawn.size  # no repeats in an epoch
      assert set(drawn.tolist()) <= set(data.partitions[w].tolist())
    assert len(set(idx.ravel().tolist())) == idx.size  # workers disjoint


def test_device_cifar_deterministic_by_step_and_reshuffled_per_epoch():
  n, k, b = 160, 4, 8
  images, labels = _random_images(n), np.arange(n) % 10
  a = cifar.DeviceCifar(images, labels, k, b, seed=1)
  same = cifar.DeviceCifar(images, labels, k, b, seed=1)
  other = cifar.DeviceCifar(images, labels, k, b, seed=2)
  xa, ya = a.batch(5)
  xs, ys = same.batch(5)
  assert xa.shape == (k, b, 32, 32, 3) and xa.dtype == np.float32
  assert ya.shape == (k, b)
  np.testing.assert_array_equal(np.asarray(xa), np.asarray(xs))
  np.testing.assert_array_equal(np.asarray(ya), np.asarray(ys))
  assert not np.array_equal(np.asarray(a.indices(5)),
                            np.asarray(other.indices(5)))
  spe = a.steps_per_epoch
  assert not np.array_equal(np.asarray(a.indices(0)),
                            np.asarray(a.indices(spe)))
  np.testing.assert_array_equal(np.asarray(ya),
                                labels[np.asarray(a.indices(5))])


def test_crop_and_flip_matches_numpy():
  images = _random_images(6)
  offsets = np.array([[0, 0], [8, 8], [4, 4], [1, 7], [6, 2], [3, 0]])
  flips = np.array([False, True, False, True, True, False])
  got = np.asarray(cifar.crop_and_flip(images, offsets, flips))
  for i in range(6):
    np.testing.assert_array_equal(
        got[i], _numpy_crop_flip(images[i], *offsets[i], flips[i]))
  np.testing.assert_array_equal(got[2], images[2])  # (4, 4) is the identity


def test_device_augmentation_is_pad_crop_flip_and_flips_half():
  n, k, b = 256, 4, 32
  images = _random_images(n, seed=5)
  mean, std = cifar_jpeg.STATS["cifar10"]
  data = cifar.DeviceCifar(images, np.zeros(n), k, b, seed=0, mean=mean,
                           std=std)
  candidates = [(dy, dx, f) for dy in range(9) for dx in range(9)
                for f in (False, True)]
  flips = []
  for step in range(2):
    x = np.asarray(data.batch(step)[0])
    idx = np.asarray(data.indices(step))
    for w in range(k):
      for j in range(b):
        expected = np.stack([_numpy_crop_flip(images[idx[w, j]], *c)
                             for c in candidates]) / 255.0
        expected = (expected - np.array(mean)) / np.array(std)
        error = np.abs(expected - x[w, j]).max(axis=(1, 2, 3))
        matches = np.flatnonzero(error < 1e-4)
        assert len(matches) == 1, (step, w, j)
        flips.append(candidates[matches[0]][2])
  assert 0.4 < np.mean(flips) < 0.6  # 256 draws: 3 standard deviations


def test_device_cifar_sharded_output_matches_unsharded():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("workers",))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec("workers"))
  images, labels = _random_images(128), np.arange(128) % 10
  sharded = cifar.DeviceCifar(images, labels, 8, 4, seed=0, sharding=sharding)
  plain = cifar.DeviceCifar(images, labels, 8, 4, seed=0)
  x, y = sharded.batch(2)
  assert x.sharding.is_equivalent_to(sharding, x.ndim)
  assert len(x.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(x), np.asarray(plain.batch(2)[0]))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(plain.batch(2)[1]))


def test_device_cifar_rejects_too_many_workers_or_too_small_partitions():
  images, labels = _random_images(10), np.zeros(10)
  with pytest.raises(ValueError, match="Cannot split 10 examples among 16"):
    cifar.DeviceCifar(images, labels, 16, 1, seed=0)
  with pytest.raises(ValueError, match="fewer than local_batch=4"):
    cifar.DeviceCifar(images, labels, 4, 4, seed=0)


def test_eval_batches_pad_and_mask():
  images, labels = _random_images(10), np.arange(10)
  batches = list(cifar.eval_batches(images, labels, 4, (0.5,) * 3, (0.25,) * 3))
  assert len(batches) == 3
  x, y, mask = batches[-1]
  assert x.shape == (4, 32, 32, 3) and y.shape == (4,)
  np.testing.assert_array_equal(np.asarray(mask), [True, True, False, False])
  np.testing.assert_array_equal(np.asarray(y), [8, 9, 0, 0])
  np.testing.assert_allclose(np.asarray(batches[0][0][0]),
                             (images[0] / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_eval_batches_compile_once_across_evaluations():
  images, labels = _random_images(10), np.arange(10)
  list(cifar.eval_batches(images, labels, 4, (0.5,) * 3, (0.25,) * 3))
  with contract.count_compilations() as compilations:
    # A second evaluation, as the trainer runs one per evaluation step.
    list(cifar.eval_batches(images, labels, 4, [0.5] * 3, np.full(3, 0.25)))
  assert compilations == []


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10),
                                              ("cifar100", 100)])
def test_cifar_tfds_builders_with_mock_data(name, num_classes, tmp_path,
                                            monkeypatch):
  # mock_data replaces download_and_prepare, so nothing is downloaded.
  monkeypatch.delenv(common.DATA_DIR_ENV, raising=False)
  with tfds.testing.mock_data(num_examples=12):
    data = cifar_tfds.load_cifar_tfds(name, tmp_path)
  assert data.train_images.shape == (12, 32, 32, 3)
  assert data.train_images.dtype == np.uint8
  assert data.test_images.shape == (12, 32, 32, 3)
  assert data.train_labels.dtype == np.int32
  assert data.train_labels.max() < num_classes
  assert data.num_classes == num_classes
  assert (data.mean, data.std) == cifar_jpeg.STATS[name]
  x, y = cifar.DeviceCifar(data.train_images, data.train_labels, 2, 3,
                           seed=0).batch(0)
  assert x.shape == (2, 3, 32, 32, 3) and y.shape == (2, 3)


def _offline(*args, **kwargs):
  del args, kwargs
  raise requests.ConnectionError("no network in this test")


def test_cifar_tfds_unprepared_errors(tmp_path, monkeypatch):
  with pytest.raises(common.MissingDataError, match="not prepared"):
    cifar_tfds.load_cifar_tfds("cifar10", tmp_path, download=False)

  monkeypatch.setattr(requests.Session, "get", _offline)
  with pytest.raises(common.MissingDataError) as error:
    cifar_tfds.load_cifar_tfds("cifar10", tmp_path, manual_dir=tmp_path / "manual")
  message = str(error.value)
  assert "no network in this test" in message
  assert str(tmp_path / "manual") in message  # where to put the archive
  assert "cifar-10-binary.tar.gz (170052171 bytes, sha256 c4a38c50" in message
  assert "no TensorFlow is needed" in message
  assert "tensorflow-cpu" not in message


def test_cifar_checksums_are_the_stock_tfds_ones():
  stock = tfds.core.download.checksums.load_url_infos(
      pathlib.Path(tfds.__file__).parent / "url_checksums" / "cifar10.txt")
  stock.update(tfds.core.download.checksums.load_url_infos(
      pathlib.Path(tfds.__file__).parent / "url_checksums" / "cifar100.txt"))
  for archive in cifar_tfds.ARCHIVES.values():
    ours = cifar_tfds.CifarBinary.url_infos[archive.url]
    assert ours == stock[archive.url]
    assert ours.filename == archive.file_name


def _records(images: np.ndarray, labels: np.ndarray) -> bytes:
  """CIFAR binary records: label bytes, then the R, G and B planes."""
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  return np.concatenate([labels.reshape(len(images), -1).astype(np.uint8),
                         planes], axis=1).tobytes()


def _write_fake_cifar_archive(
    directory: pathlib.Path, name: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """A tiny archive in the original layout; returns split -> (x, labels)."""
  archive = cifar_tfds.ARCHIVES[name]
  rng = np.random.default_rng(0)
  contents, expected = {}, {}
  for split, files in archive.split_files.items():
    xs, ys = [], []
    for file in files:
      n = 3 if split == "train" else 2
      x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
      y = np.stack([rng.integers(0, classes, n)
                    for _, _, classes in archive.labels], axis=1)
      contents[file] = _records(x, y)
      xs.append(x)
      ys.append(y)
    expected[split] = (np.concatenate(xs), np.concatenate(ys))
  for _, names_file, classes in archive.labels:
    contents[names_file] = "".join(
        f"{names_file[:5]}{i}\n" for i in range(classes)).encode() + b"\n"
  directory.mkdir(parents=True, exist_ok=True)
  with tarfile.open(directory / archive.file_name, "w:gz") as tar:
    for file, data in contents.items():
      info = tarfile.TarInfo(f"{archive.directory}/{file}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return expected


def test_parse_records_pixel_layout():
  image = np.zeros((32, 32, 3), np.uint8)
  image[..., 0], image[..., 1], image[..., 2] = 1, 2, 3
  image[0, 1, 2] = 200  # blue of row 0, column 1
  record = bytearray([7] + [1] * 1024 + [2] * 1024 + [3] * 1024)
  record[1 + 2 * 1024 + 1] = 200  # B plane, row-major index 0 * 32 + 1
  images, labels = cifar_tfds.parse_records(bytes(record) * 2, 1)
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[1], image)
  np.testing.assert_array_equal(labels, [[7], [7]])
  with pytest.raises(ValueError, match="whole number of 3074-byte"):
    cifar_tfds.parse_records(bytes(3075), 2)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_builder_from_manual_archive(name, tmp_path,
                                                  monkeypatch):
  expected = _write_fake_cifar_archive(tmp_path / "manual", name)
  archive = cifar_tfds.ARCHIVES[name]
  # Register the fake archive's checksum instead of the original's.
  monkeypatch.setattr(cifar_tfds.CifarBinary, "url_infos", {
      archive.url: tfds.core.download.checksums.compute_url_info(
          tmp_path / "manual" / archive.file_name)})
  monkeypatch.setattr(requests.Session, "get", _offline)  # no download
  data = cifar_tfds.load_cifar_tfds(name, tmp_path / "tfds",
                               manual_dir=tmp_path / "manual")
  fine = [k for k, _, _ in archive.labels].index("label")
  np.testing.assert_array_equal(data.train_images, expected["train"][0])
  np.testing.assert_array_equal(data.train_labels,
                                expected["train"][1][:, fine])
  np.testing.assert_array_equal(data.test_images, expected["test"][0])
  np.testing.assert_array_equal(data.test_labels, expected["test"][1][:, fine])
  assert data.train_images.shape == (15 if name == "cifar10" else 3, 32, 32, 3)
  assert data.train_labels.dtype == np.int32
  assert data.num_classes == cifar_jpeg.NUM_CLASSES[name]
  builder = cifar_tfds.CifarBinary(config=name, data_dir=str(tmp_path / "tfds"))
  assert builder.is_prepared()
  features = builder.info.features
  assert features["label"].names[:2] == [f"{archive.labels[fine][1][:5]}0",
                                         f"{archive.labels[fine][1][:5]}1"]
  if name == "cifar100":
    source = builder.as_data_source("train")
    coarse = [source[i]["coarse_label"] for i in range(len(source))]
    np.testing.assert_array_equal(coarse, expected["train"][1][:, 0])
    assert features["coarse_label"].num_classes == 20
  # Prepared: loading again reads it back without the archive.
  (tmp_path / "manual" / archive.file_name).unlink()
  again = cifar_tfds.load_cifar_tfds(name, tmp_path / "tfds", download=False)
  np.testing.assert_array_equal(again.test_images, data.test_images)


def test_cifar_binary_builder_pixel_layout_and_labels(tmp_path, monkeypatch):
  archive = cifar_tfds.ARCHIVES["cifar10"]
  planes = np.zeros((1, 32, 32, 3), np.uint8)
  planes[..., 0], planes[..., 1], planes[..., 2] = 1, 2, 3
  ramp = np.arange(32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(
      1, 32, 32, 3)
  contents = {file: _records(planes, np.array([i])) for i, file in
              enumerate(archive.split_files["train"])}
  contents["test_batch.bin"] = _records(ramp, np.array([9]))
  contents["batches.meta.txt"] = "".join(
      f"class{i}\n" for i in range(10)).encode()
  (tmp_path / "manual").mkdir()
  path = tmp_path / "manual" / archive.file_name
  with tarfile.open(path, "w:gz") as tar:
    for file, data in contents.items():
      info = tarfile.TarInfo(f"{archive.directory}/{file}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  monkeypatch.setattr(cifar_tfds.CifarBinary, "url_infos", {
      archive.url: tfds.core.download.checksums.compute_url_info(path)})
  data = cifar_tfds.load_cifar_tfds("cifar10", tmp_path / "tfds",
                               manual_dir=tmp_path / "manual")
  assert data.train_images.shape == (5, 32, 32, 3)
  assert (data.train_images[..., 0] == 1).all()
  assert (data.train_images[..., 1] == 2).all()
  assert (data.train_images[..., 2] == 3).all()
  np.testing.assert_array_equal(data.train_labels, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(data.test_images, ramp)
  np.testing.assert_array_equal(data.test_labels, [9])


def test_cifar_binary_builder_rejects_archive_with_wrong_checksum(tmp_path):
  _write_fake_cifar_archive(tmp_path / "manual", "cifar10")
  # The registered checksum is the original archive's: the fake one fails.
  with pytest.raises(
      tfds.core.download.download_manager.NonMatchingChecksumError,
      match="has wrong checksum"):
    cifar_tfds.load_cifar_tfds("cifar10", tmp_path / "tfds",
                          manual_dir=tmp_path / "manual")


def test_jpeg_subset_missing_and_corrupt(tmp_path, monkeypatch):
  monkeypatch.delenv(common.DATA_DIR_ENV, raising=False)
  with pytest.raises(common.MissingDataError, match=common.DATA_DIR_ENV):
    cifar_jpeg.load_cifar10_jpeg_subset()
  with pytest.raises(common.MissingDataError, match="does not exist"):
    cifar_jpeg.load_cifar10_jpeg_subset(tmp_path)
  (tmp_path / "cifar10-jpeg").mkdir()
  with pytest.raises(common.MissingDataError,
                     match="missing cifar10_jpeg_subset.npz"):
    cifar_jpeg.load_cifar10_jpeg_subset(tmp_path)
  zeros = np.zeros((4, 32, 32, 3), np.uint8)
  np.savez(tmp_path / "cifar10-jpeg" / "cifar10_jpeg_subset.npz",
           x_train=zeros, y_train=np.zeros(4, np.int64), x_test=zeros,
           y_test=np.zeros(4, np.int64))
  with pytest.raises(common.ChecksumError,
                     match="array x_train.*expected 4934"):
    cifar_jpeg.load_cifar10_jpeg_subset(tmp_path)


def _encode_jpegs(images: np.ndarray, quality: int = 95) -> list[bytes]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  files = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    files.append(buffer.getvalue())
  return files


def _pil_decode(files: list[bytes]) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB"))
                   for f in files])


def _concatenate(files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])])
  return np.frombuffer(b"".join(files), np.uint8), offsets.astype(np.int64)


def test_decode_jpeg_arrays_matches_pillow_and_checks_offsets():
  files = _encode_jpegs(_random_images(5, seed=3))
  jpeg, offsets = _concatenate(files)
  decoded = cifar_jpeg.decode_jpeg_arrays(jpeg, offsets)
  assert decoded.dtype == np.uint8 and decoded.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(decoded, _pil_decode(files))
  with pytest.raises(ValueError, match="must run from 0 to .* length"):
    cifar_jpeg.decode_jpeg_arrays(jpeg[:-1], offsets)
  bad = offsets.copy()
  bad[2] = bad[3]
  with pytest.raises(ValueError, match="strictly increasing.*file 2"):
    cifar_jpeg.decode_jpeg_arrays(jpeg, bad)
  with pytest.raises(ValueError, match="file 1 .* not a readable JPEG"):
    cifar_jpeg.decode_jpeg_arrays(*_concatenate([files[0], b"not a jpeg"]))
  small = _encode_jpegs(np.zeros((1, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match=r"file 0 decodes to shape \(16, 16"):
    cifar_jpeg.decode_jpeg_arrays(*_concatenate(small))
  with pytest.raises(ValueError, match="1-D uint8"):
    cifar_jpeg.decode_jpeg_arrays(jpeg.astype(np.int64), offsets)


def _write_fake_jpeg_full(path: pathlib.Path, per_class: dict[str, int],
                          seed: int = 0) -> dict[str, np.ndarray]:
  """A small cifar10_jpeg_full.npz; returns the images Pillow decodes."""
  arrays, expected = {}, {}
  for i, (split, count) in enumerate(per_class.items()):
    labels = np.repeat(np.arange(10), count)
    files = _encode_jpegs(_random_images(len(labels), seed=seed + i))
    arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = _concatenate(files)
    arrays[f"{split}_labels"] = labels.astype(np.int64)
    expected[f"{split}_images"] = _pil_decode(files)
    expected[f"{split}_labels"] = labels
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, class_names=np.array(cifar_jpeg.CIFAR10_CLASS_NAMES),
                      **arrays)
  return expected


def test_jpeg_full_missing_and_wrong_checksum(tmp_path, monkeypatch):
  monkeypatch.delenv(common.DATA_DIR_ENV, raising=False)
  with pytest.raises(common.MissingDataError, match=common.DATA_DIR_ENV):
    cifar_jpeg.load_cifar10_jpeg_full(cache_dir=tmp_path / "cache")
  (tmp_path / "cifar10-jpeg").mkdir()
  with pytest.raises(common.MissingDataError,
                     match="missing cifar10_jpeg_full.npz"):
    cifar_jpeg.load_cifar10_jpeg_full(tmp_path, cache_dir=tmp_path / "cache")
  path = tmp_path / "cifar10-jpeg" / "cifar10_jpeg_full.npz"
  _write_fake_jpeg_full(path, {"train": 1, "test": 1})
  actual = hashlib.sha256(path.read_bytes()).hexdigest()
  assert cifar_jpeg.file_sha256(path, chunk_size=1000) == actual
  with pytest.raises(common.ChecksumError) as error:
    cifar_jpeg.load_cifar10_jpeg_full(tmp_path, cache_dir=tmp_path / "cache")
  message = str(error.value)
  assert str(path) in message
  assert f"expected {cifar_jpeg.JPEG_FULL_SHA256}" in message
  assert f"actual {actual}" in message
  assert "replace it with the original" in message
  assert not (tmp_path / "cache").exists()


def test_jpeg_full_decodes_checks_and_caches(tmp_path, monkeypatch):
  # A small stand-in for the real file: 2 train and 1 test image per class.
  path = tmp_path / "data" / "cifar10-jpeg" / "cifar10_jpeg_full.npz"
  expected = _write_fake_jpeg_full(path, {"train": 2, "test": 1})
  monkeypatch.setattr(cifar_jpeg, "JPEG_FULL_SIZES", {"train": 20, "test": 10})
  monkeypatch.setattr(cifar_jpeg, "JPEG_FULL_SHA256", cifar_jpeg.file_sha256(path))
  cache_dir = tmp_path / "cache"
  data = cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data", cache_dir=cache_dir)
  for key, value in expected.items():
    got = getattr(data, key)
    assert got.dtype == (np.uint8 if key.endswith("images") else np.int32)
    np.testing.assert_array_equal(got, value)
  assert (data.num_classes, data.mean, data.std) == (10, *cifar_jpeg.STATS[
      "cifar10"])
  # The cache is named by the source's sha256 and has no leftover temp file.
  cached = list(cache_dir.iterdir())
  assert [c.name for c in cached] == [
      f"cifar10_jpeg_full-{cifar_jpeg.JPEG_FULL_SHA256}-decoded-v1.npz"]

  # The second load reads the cache and does not decode.
  real_decode = cifar_jpeg._decode_jpeg_full
  def no_decode(_):
    raise AssertionError("decoded although the cache is valid")
  monkeypatch.setattr(cifar_jpeg, "_decode_jpeg_full", no_decode)
  again = cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data", cache_dir=cache_dir)
  for key, value in expected.items():
    np.testing.assert_array_equal(getattr(again, key), value)

  # An unreadable or invalid cache is decoded again and rewritten.
  decodes = []
  def counting_decode(p):
    decodes.append(p)
    return real_decode(p)
  monkeypatch.setattr(cifar_jpeg, "_decode_jpeg_full", counting_decode)
  cached[0].write_bytes(b"garbage")
  again = cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data", cache_dir=cache_dir)
  np.testing.assert_array_equal(again.train_images, expected["train_images"])
  with np.load(cached[0]) as npz:
    arrays = dict(npz)
  np.savez(cached[0], **{**arrays, "test_images": arrays["test_images"][:5]})
  again = cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data", cache_dir=cache_dir)
  np.testing.assert_array_equal(again.test_images, expected["test_images"])
  assert len(decodes) == 2
  assert cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data",
                                      cache_dir=cache_dir) is not None
  assert len(decodes) == 2

  # Another source file (another sha256) never reuses the old cache.
  expected = _write_fake_jpeg_full(path, {"train": 2, "test": 1}, seed=10)
  monkeypatch.setattr(cifar_jpeg, "JPEG_FULL_SHA256", cifar_jpeg.file_sha256(path))
  again = cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data", cache_dir=cache_dir)
  np.testing.assert_array_equal(again.train_images, expected["train_images"])
  assert len(decodes) == 3 and len(list(cache_dir.iterdir())) == 2

  # A cache directory that cannot be created only means no caching.
  (tmp_path / "a_file").write_text("")
  again = cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data",
                                       cache_dir=tmp_path / "a_file" / "c")
  np.testing.assert_array_equal(again.test_images, expected["test_images"])

  # The default cache directory follows $XDG_CACHE_HOME.
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cifar_jpeg.default_cache_dir() == tmp_path / "xdg" / "extrap_optax"
  cifar_jpeg.load_cifar10_jpeg_full(tmp_path / "data")
  assert len(list((tmp_path / "xdg" / "extrap_optax").iterdir())) == 1


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(train_offsets=a["train_offsets"][:-1]),
     r"train split\): expected 21 offsets"),
    (lambda a: a.update(test_offsets=a["test_offsets"] + 1),
     r"test split\): the offsets run from 1"),
    (lambda a: a.update(train_labels=np.sort(a["train_labels"] % 3)),
     "expected 2 labels per class"),
    (lambda a: a.update(test_labels=a["test_labels"] + 5),
     r"labels must lie in \[0, 10\)"),
    (lambda a: a.pop("test_jpeg"), "lacks the arrays test_jpeg"),
    (lambda a: a.update(class_names=a["class_names"][::-1]),
     "not the CIFAR-10 classes"),
])
def test_jpeg_full_rejects_inconsistent_arrays(tmp_path, monkeypatch, change,
                                                match):
  path = tmp_path / "cifar10-jpeg" / "cifar10_jpeg_full.npz"
  _write_fake_jpeg_full(path, {"train": 2, "test": 1})
  with np.load(path) as npz:
    arrays = dict(npz)
  change(arrays)
  np.savez_compressed(path, **arrays)
  monkeypatch.setattr(cifar_jpeg, "JPEG_FULL_SIZES", {"train": 20, "test": 10})
  monkeypatch.setattr(cifar_jpeg, "JPEG_FULL_SHA256", cifar_jpeg.file_sha256(path))
  with pytest.raises(ValueError, match=match):
    cifar_jpeg.load_cifar10_jpeg_full(tmp_path, cache_dir=tmp_path / "cache")
  assert not (tmp_path / "cache").exists()


def test_classification_picks_full_or_subset_jpeg(tmp_path, monkeypatch):
  from experiments import tasks  # pylint: disable=g-import-not-at-top
  from experiments.configs import base  # pylint: disable=g-import-not-at-top
  from experiments.tasks import classification  # pylint: disable=g-import-not-at-top
  calls = []
  for module, name in ((cifar_jpeg, "load_cifar10_jpeg_full"),
                       (cifar_jpeg, "load_cifar10_jpeg_subset"),
                       (cifar_tfds, "load_cifar_tfds")):
    monkeypatch.setattr(module, name,
                        lambda *a, _name=name, **k: calls.append(_name))
  config = base.get_config()
  config.data.data_dir = str(tmp_path)

  def picked(source, dataset="cifar10"):
    config.data.source, config.data.dataset = source, dataset
    calls.clear()
    tasks.Classification._load(config)
    resolved = tasks.Classification.resolve_source(config)
    assert resolved in classification.SOURCE_NAMES
    return calls[0].removeprefix("load_").removeprefix("cifar10_"), resolved

  assert picked("auto") == ("cifar_tfds", "tfds")
  jpeg_dir = tmp_path / "cifar10-jpeg"
  jpeg_dir.mkdir()
  (jpeg_dir / "cifar10_jpeg_subset.npz").write_bytes(b"")
  for source in ("auto", "jpeg", "local", "jpeg_subset"):
    assert picked(source) == ("jpeg_subset", "jpeg_subset"), source
  assert picked("jpeg_full") == ("jpeg_full", "jpeg_full")
  (jpeg_dir / "cifar10_jpeg_full.npz").write_bytes(b"")
  for source in ("auto", "jpeg", "local", "jpeg_full"):
    assert picked(source) == ("jpeg_full", "jpeg_full"), source
  assert picked("jpeg_subset") == ("jpeg_subset", "jpeg_subset")
  assert picked("tfds") == ("cifar_tfds", "tfds")
  assert picked("auto", "cifar100") == ("cifar_tfds", "tfds")
  for source in ("jpeg_full", "jpeg_subset", "jpeg"):
    with pytest.raises(ValueError, match="only has CIFAR-10"):
      picked(source, "cifar100")
  with pytest.raises(ValueError, match="Unknown data.source 'jpg'"):
    picked("jpg")
  assert classification.SOURCE_NAMES["jpeg_full"] == (
      "cifar10_jpeg_full (JPEG quality 75)")
  assert set(base.DATA_SOURCES) - {"auto", "jpeg", "local"} == set(
      classification.SOURCE_NAMES)


# ------------------------------------------------------------ WikiText-2

_WIKI_TEXT = {
    "train": " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 \n",
    "validation": " \n = Homarus = \n",
    "test": " Robert <unk> is an English actor \n",
}


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _write_fake_wikitext(root: pathlib.Path) -> dict[str, str]:
  directory = root / "wikitext-2"
  directory.mkdir(parents=True)
  for split, text in _WIKI_TEXT.items():
    with gzip.open(directory / wikitext2.FILES[split], "wb") as f:
      f.write(text.encode("utf-8"))
  return {s: _sha256(t.encode("utf-8")) for s, t in _WIKI_TEXT.items()}


def test_load_wikitext2_pytorch_convention(tmp_path):
  sha = _write_fake_wikitext(tmp_path)
  train, valid, test, vocab = wikitext2.load_wikitext2(tmp_path, sha256=sha)
  # 4 lines: 1 + 6 + 1 + 5 tokens (empty lines give one <eos> each).
  assert (len(train), len(valid), len(test)) == (13, 5, 7)
  assert vocab.itos[:4] == ("<eos>", "=", "Valkyria", "Chronicles")
  assert vocab.decode(train[:6].tolist()) == [
      "<eos>", "=", "Valkyria", "Chronicles", "III", "="]
  assert "Robert" in vocab.stoi and train.dtype == np.int32


def test_wikitext2_errors(tmp_path, monkeypatch):
  monkeypatch.delenv(common.DATA_DIR_ENV, raising=False)
  with pytest.raises(common.MissingDataError, match=common.DATA_DIR_ENV):
    wikitext2.load_wikitext2()
  with pytest.raises(common.MissingDataError,
                     match=r"wikitext-2 does not exist.*train.txt.gz"):
    wikitext2.load_wikitext2(tmp_path)
  sha = _write_fake_wikitext(tmp_path)
  (tmp_path / "wikitext-2" / "valid.txt.gz").unlink()
  with pytest.raises(common.MissingDataError,
                     match=r"incomplete: missing valid.txt.gz \(gzip of"):
    wikitext2.load_wikitext2(tmp_path, sha256=sha)
  with pytest.raises(common.ChecksumError) as error:
    wikitext2.read_lines(tmp_path / "wikitext-2" / "train.txt.gz",
                         wikitext2.SHA256["train"])
  message = str(error.value)
  assert "train.txt.gz" in message
  assert wikitext2.SHA256["train"] in message and sha["train"] in message


def test_wikitext2_builder_from_manual_dir(tmp_path):
  sha = _write_fake_wikitext(tmp_path / "data")

  class FakeWikitext2(wikitext2.Wikitext2, skip_registration=True):
    SHA256 = sha

  builder = wikitext2.prepare_wikitext2(tmp_path / "tfds", tmp_path / "data",
                                        builder_cls=FakeWikitext2)
  source = builder.as_data_source("train")
  lines = [source[i]["text"].decode("utf-8") for i in range(len(source))]
  assert lines == _WIKI_TEXT["train"].removesuffix("\n").split("\n")
  assert len(builder.as_data_source("validation")) == 2
  tokens = wikitext2.tokenize_lines(lines)
  assert sum(len(t) for t in tokens) == 13


def test_wikitext2_builder_rejects_wrong_checksum(tmp_path):
  _write_fake_wikitext(tmp_path / "data")
  with pytest.raises(common.ChecksumError, match="train.txt.gz"):
    wikitext2.prepare_wikitext2(tmp_path / "tfds", tmp_path / "data")


def test_checksums_tsv_registers_all_urls():
  urls = wikitext2.Wikitext2.url_infos
  assert set(wikitext2.URLS.values()) <= set(urls)
  for split, url in wikitext2.URLS.items():
    assert urls[url].checksum == wikitext2.SHA256[split]
  for name, sha in multi30k.SHA256.items():
    assert multi30k.Multi30k.url_infos[multi30k._URL_ROOT + name].checksum == sha


def test_lm_batcher_layout_and_worker_columns():
  k, b, bptt, n = 3, 2, 5, 200
  ids = np.arange(n)
  batcher = wikitext2.LMBatcher(ids, k, b, bptt)
  length = n // (k * b)  # 33 tokens per column
  assert batcher.data.shape == (length, k * b)
  assert batcher.steps_per_epoch == (length - 1) // bptt == 6
  batches = list(wikitext2.lm_batches(ids, k, b, bptt))
  assert len(batches) == 6
  for step, (x, y) in enumerate(batches):
    assert x.shape == y.shape == (k, b, bptt)
    np.testing.assert_array_equal(y, x + 1)  # targets: the next token
    # pytorch/examples get_batch: rows [i, i+bptt) of batchify's output.
    reference = batcher.data[step * bptt:(step + 1) * bptt]
    np.testing.assert_array_equal(x.reshape(k * b, bptt), reference.T)
  seen = [np.concatenate([x[w].ravel() for x, _ in batches]) for w in range(k)]
  for w in range(k):
    # Worker w owns the contiguous span of its B columns.
    span = set(range(w * b * length, (w + 1) * b * length))
    assert set(seen[w].tolist()) <= span
    assert len(span - set(seen[w].tolist())) == b * (length - 6 * bptt)
  np.testing.assert_array_equal(batcher.batch(6)[0], batcher.batch(0)[0])


def test_lm_batcher_too_short():
  with pytest.raises(ValueError, match="too short"):
    wikitext2.LMBatcher(np.arange(100), 4, 4, 35)


# --------------------------------------------------------------- Multi30k

_M30K = {
    "train": (["Two dogs play.", "A man runs!", "A & B."],
              ["Zwei Hunde spielen.", "Ein Mann rennt!", "A & B."]),
    "validation": (["A cat."], ["Eine Katze."]),
    "test": (["A dog.", "Two men."], ["Ein Hund.", "Zwei Männer."]),
}


def _write_fake_multi30k(root: pathlib.Path) -> dict[str, str]:
  directory = root / "multi30k"
  directory.mkdir(parents=True)
  sha = {}
  for split, pair in _M30K.items():
    for lang, lines in zip(multi30k.LANGS, pair):
      name = multi30k.file_name(split, lang)
      data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)
      (directory / name).write_bytes(data)
      sha[name] = _sha256(data)
  return sha


def test_load_multi30k_and_builder_from_manual_dir(tmp_path):
  sha = _write_fake_multi30k(tmp_path / "data")
  assert multi30k.load_multi30k(tmp_path / "data", sha256=sha) == {
      s: (list(en), list(de)) for s, (en, de) in _M30K.items()}

  class FakeMulti30k(multi30k.Multi30k, skip_registration=True):
    SHA256 = sha

  builder = multi30k.prepare_multi30k(tmp_path / "tfds", tmp_path / "data",
                                      builder_cls=FakeMulti30k)
  for split, (en, de) in _M30K.items():
    source = builder.as_data_source(split)
    assert len(source) == len(en)
    assert [source[i]["de"].decode() for i in range(len(source))] == de
    assert [source[i]["en"].decode() for i in range(len(source))] == en


def test_multi30k_errors(tmp_path):
  with pytest.raises(common.MissingDataError, match="multi30k does not exist"):
    multi30k.load_multi30k(tmp_path)
  sha = _write_fake_multi30k(tmp_path)
  (tmp_path / "multi30k" / "test_2016_flickr.de.gz").unlink()
  with pytest.raises(common.MissingDataError,
                     match="missing test_2016_flickr.de.gz"):
    multi30k.load_multi30k(tmp_path, sha256=sha)
  _write_fake_multi30k(tmp_path / "again")
  with pytest.raises(common.ChecksumError,
                     match=r"train.en.gz.*expected d79cfa99"):
    multi30k.load_multi30k(tmp_path / "again")
  bad = dict(sha)
  (tmp_path / "again" / "multi30k" / "val.de.gz").write_bytes(
      gzip.compress(b"one\ntwo\n"))
  bad["val.de.gz"] = _sha256(
      (tmp_path / "again" / "multi30k" / "val.de.gz").read_bytes())
  with pytest.raises(ValueError, match="must align"):
    multi30k.load_multi30k(tmp_path / "again", sha256=bad)


def test_vocab_specials_and_min_freq():
  sentences = [["a", "b", "a"], ["a", "c", "b"], ["d"]]
  vocab = multi30k.build_vocab(sentences, min_freq=2)
  assert vocab.itos == ("<pad>", "<unk>", "<bos>", "<eos>", "a", "b")
  assert [vocab["<pad>"], vocab["<unk>"], vocab["<bos>"], vocab["<eos>"]] == [
      multi30k.PAD_ID, multi30k.UNK_ID, multi30k.BOS_ID, multi30k.EOS_ID]
  assert vocab.encode(["a", "d", "zzz"]) == [4, 1, 1]


def _synthetic_pairs(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  src = [np.arange(1, rng.integers(3, 40), dtype=np.int32) + 3
         for _ in range(n)]
  tgt = [np.concatenate([[multi30k.BOS_ID], s + 1, [multi30k.EOS_ID]])
         for s in src]
  return src, tgt


def test_translation_batcher_shapes_epochs_and_buckets():
  src, tgt = _synthetic_pairs(1000)
  k, b = 4, 8
  batcher = multi30k.TranslationBatcher(src, tgt, k, b, seed=0,
                                        pool_batches=10)
  assert batcher.steps_per_epoch == 1000 // 32
  plan = batcher.epoch_plan(0)
  assert len(set(plan.ravel().tolist())) == plan.size  # each pair once
  s, t = batcher.batch(3)
  assert s.shape[:2] == (k, b) and t.shape[:2] == (k, b)
  assert s.shape[2] % 8 == 0 and t.shape[2] % 8 == 0
  members = plan[3].reshape(k, b)
  for w in range(k):
    for j in range(b):
      n = len(src[members[w, j]])
      np.testing.assert_array_equal(s[w, j, :n], src[members[w, j]])
      assert (s[w, j, n:] == multi30k.PAD_ID).all()
  # Bucketing: lengths within a batch spread much less than at random.
  spread = np.mean([np.ptp([len(src[i]) for i in row]) for row in plan])
  assert spread < 10  # random batches of 32 of lengths 2..38 spread ~33
  again = multi30k.TranslationBatcher(src, tgt, k, b, seed=0, pool_batches=10)
  np.testing.assert_array_equal(again.batch(3)[0], s)
  assert not np.array_equal(batcher.epoch_plan(1), plan)
  np.testing.assert_array_equal(
      batcher.batch(batcher.steps_per_epoch + 3)[0].shape[:2], (k, b))


def test_translation_batcher_too_small_and_eval_batches():
  src, tgt = _synthetic_pairs(10)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    multi30k.TranslationBatcher(src, tgt, 4, 4, seed=0)
  batches = list(multi30k.eval_batches(src, tgt, 4))
  assert len(batches) == 3
  s, t, mask = batches[-1]
  assert s.shape[0] == t.shape[0] == 4
  np.testing.assert_array_equal(mask, [True, True, False, False])
  np.testing.assert_array_equal(s[0, :len(src[8])], src[8])


def test_detokenize_round_trip_and_perfect_bleu():
  german = tokenizer.Tokenizer("de")
  references = ["Zwei junge weiße Männer sind im Freien in der Nähe vieler "
                "Büsche.", "Ein Mann, der „Hallo“ sagt & lacht!"]
  tokens = [german.tokenize(r) for r in references]
  assert tokens[0][-1] == "." and tokens[0][0] == "zwei"
  assert "&" in tokens[1]  # no XML escaping
  assert [german.detokenize(t) for t in tokens] == [r.lower()
                                                       for r in references]
  vocab = multi30k.build_vocab(tokens, min_freq=1)
  hypotheses = [[multi30k.BOS_ID] + vocab.encode(t) + [multi30k.EOS_ID,
                                                        multi30k.PAD_ID, 7]
                for t in tokens]
  assert bleu.bleu(hypotheses, references, vocab,
                   german) == pytest.approx(100.0)
  assert bleu.bleu([hypotheses[1], hypotheses[0]], references, vocab,
                   german) < 10
  cased = tokenizer.Tokenizer("de", lowercase=False)
  assert cased.detokenize(cased.tokenize(references[0])) == references[0]
