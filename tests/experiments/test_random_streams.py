"""Every purpose draws from its own random stream: no key is ever reused."""

import jax
import numpy as np
import pytest

from experiments import configs
from experiments import random_streams
from experiments import train
from experiments.input_pipeline import cifar

SEED, EPOCHS, STEPS_PER_EPOCH, WORKERS = 3, 6, 10, 8


def _data(key):
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _keys_of_a_run(seed):
  """(purpose, indices) -> key data of every key a run derives, as built by
  the trainer and the CIFAR pipeline (their derivations, written out)."""
  keys = {}
  root = {p: random_streams.stream_key(seed, p)
          for p in random_streams.PURPOSES}
  noise_root = jax.random.key(random_streams.stream_seed(seed, "noise"))
  for purpose in ("init", "partition", "shuffle", "augment", "dropout"):
    keys[(purpose,)] = root[purpose]
  keys[("noise",)] = noise_root
  for e in range(EPOCHS):
    epoch_key = jax.random.fold_in(root["shuffle"], e)
    keys[("shuffle", e)] = epoch_key
    for k in range(WORKERS):
      keys[("shuffle", e, k)] = jax.random.fold_in(epoch_key, k)
    augment_epoch = jax.random.fold_in(root["augment"], e)
    keys[("augment", e)] = augment_epoch
    for i in range(STEPS_PER_EPOCH):
      step_key = jax.random.fold_in(augment_epoch, i)
      keys[("augment", e, i)] = step_key
      for k in range(WORKERS):
        keys[("augment", e, i, k)] = jax.random.fold_in(step_key, k)
  for step in range(EPOCHS * STEPS_PER_EPOCH):
    for name, base in (("dropout", root["dropout"]), ("noise", noise_root)):
      step_key = jax.random.fold_in(base, step)
      keys[(name, step)] = step_key
      for k in range(WORKERS):
        keys[(name, step, k)] = jax.random.fold_in(step_key, k)
  return keys


def test_keys_of_different_purposes_never_coincide():
  keys = _keys_of_a_run(SEED)
  seen = {}
  for name, key in keys.items():
    data = _data(key)
    assert data not in seen, f"{name} reuses the key of {seen[data]}"
    seen[data] = name
  # Nor with the keys of the next seed.
  for name, key in _keys_of_a_run(SEED + 1).items():
    assert _data(key) not in seen, name


def test_tags_are_distinct_and_not_small_integers():
  # Small tags (0, 1, 2) would make a stream's root key the key of an early
  # step or epoch of another derivation from the same root.
  tags = [random_streams.tag(p) for p in random_streams.PURPOSES]
  assert len(set(tags)) == len(tags) and min(tags) > 1_000_000


def test_the_trainer_and_pipeline_use_their_streams(tmp_path):
  config = configs.get_preset("table1", "toy").runs[
      "resnet20_extrap_uniform_noise"]
  config.seed = SEED
  setup = train.set_up(config)
  assert _data(setup.dropout_key) == _data(
      random_streams.stream_key(SEED, "dropout"))
  shuffle_key, augment_key = setup.task.pipeline._keys
  assert _data(shuffle_key) == _data(random_streams.stream_key(SEED, "shuffle"))
  assert _data(augment_key) == _data(random_streams.stream_key(SEED, "augment"))
  expected = np.asarray(jax.random.permutation(
      random_streams.stream_key(SEED, "partition"), 256)[:256]).reshape(8, 32)
  np.testing.assert_array_equal(cifar.worker_partitions(256, 8, SEED),
                                expected)
  # The noise's int seed is the noise stream's, not the run's.
  assert random_streams.stream_seed(SEED, "noise") != SEED


def test_unknown_stream_is_named():
  with pytest.raises(ValueError, match="Unknown random stream 'data'"):
    random_streams.tag("data")
