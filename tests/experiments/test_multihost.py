"""2 processes x 4 CPU devices (jax.distributed, gloo) follow 1 process x 8.

The test starts this file three times: as the two processes of one
`jax.distributed` job and as one process with all 8 devices. Each trains the
same toy runs and records (`_instrument`) what every worker was fed and what
it computed; the test then compares the two layouts:

- bit for bit: every worker's batch and random key at every step, its
  parameters and its local gradient at step 0 (same inputs, same per-device
  program, same thread-pool size; see `_ENV`);
- within float32 summation-order bounds: the all-reduced gradient, which gloo
  and the in-process all-reduce add in different orders;
- at rtol 1e-5: the final parameters, where rounding is not amplified (see
  `_runs`).
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax

import extrap_optax
from experiments import configs
from experiments import train

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_WORKERS = 8
# Steps whose batches are compared, whether trained or not.
DATA_STEPS = 3
# XLA:CPU sizes a process's Eigen thread pool as max(NPROC, or else the
# number of CPUs, local devices): 8 threads with 8 devices but 4 with 4 on a
# 2-core machine, and the float32 kernel-gradient convolution sums in a
# pool-size-dependent order (1e-7 relative on ResNet's 32x32 stage). The same
# NPROC in all three processes gives them the same pool on any CPU.
_ENV = {"JAX_PLATFORMS": "cpu", "NPROC": str(NUM_WORKERS)}
# Unit roundoff of float32, and the bound γ_n = n·u/(1 − n·u) on the relative
# error of any order of n additions: |fl(Σ x) − Σ x| ≤ γ_{K−1}·Σ|x| for K terms.
_U = 2.0**-24
_GAMMA = (NUM_WORKERS - 1) * _U / (1 - (NUM_WORKERS - 1) * _U)


def _runs():
  """Toy runs with K=8 workers: one per device in both layouts."""
  # Classification: batches made on the devices from the global step. One
  # step: after it the layouts' parameters differ in the last bits (the
  # all-reduce), and among ResNet's 300k ReLU inputs per worker one within
  # ~1e-7 of zero flips sign (about 0.2 per step, measured), which changes that
  # worker's gradient discontinuously (one did at step 2: 0.5% of the stem
  # and stage-1 gradients, 0.47% on the first kernel after 3 steps).
  classification = configs.get_preset("fig1", "toy").runs["extrap_sgd"]
  classification.num_steps = 1
  # Language model: process-local host batches (`Workers.put_process_local`),
  # dropout keyed per worker. The LSTM is smooth (the dropout masks are the
  # same in both layouts), so three steps keep rounding at rounding level.
  language_model = configs.get_preset("fig2", "toy").runs["extrap_sgd_k4"]
  language_model.workers.num_workers = NUM_WORKERS
  language_model.num_steps = 3
  for config in (classification, language_model):
    config.probe_every_steps = 0
    config.checkpoint_every_steps = 0
  return [classification, language_model]


def _instrument(trainer: train.Trainer, run: int, record: dict) -> None:
  """Records every worker's batches, keys, step-0 inputs and gradients."""
  task, tx, axis = trainer.task, trainer.tx, trainer.axis_name
  train_batch, loss = task.train_batch, task.loss

  def put(kind, step, worker, tree):
    for j, leaf in enumerate(jax.tree.leaves(tree)):
      record[f"run{run}/{kind}/step{int(step)}/worker{int(worker)}/{j}"] = (
          np.array(leaf))

  def recording_train_batch(step):
    batch = train_batch(step)
    for j, leaf in enumerate(jax.tree.leaves(batch)):
      for shard in leaf.addressable_shards:
        data = np.asarray(shard.data)
        for row, worker in enumerate(range(NUM_WORKERS)[shard.index[0]]):
          record[f"run{run}/batch/step{step}/worker{worker}/{j}"] = data[row]
    return batch

  def recording_loss(params, model_state, batch, rng, step):
    jax.debug.callback(
        lambda k, s, key: put("key", s, k, key),
        extrap_optax.worker_index(axis), step, jax.random.key_data(rng))
    return loss(params, model_state, batch, rng, step)

  steps_seen = {}

  def on_update(worker, params, grads, mean):
    worker = int(worker)
    step = steps_seen[worker] = steps_seen.get(worker, -1) + 1
    put("mean_grad", step, worker, mean)
    put("local_grad", step, worker, grads)
    if step == 0:
      put("params", step, worker, params)

  def recording_update(grads, state, params=None):
    jax.debug.callback(on_update, extrap_optax.worker_index(axis), params,
                       grads, jax.lax.pmean(grads, axis))
    return tx.update(grads, state, params)

  task.train_batch, task.loss = recording_train_batch, recording_loss
  trainer.tx = optax.GradientTransformation(tx.init, recording_update)


def _train_all(out: pathlib.Path) -> None:
  record = {}
  for run, config in enumerate(_runs()):
    trainer = train.Trainer(config, out / config.name)
    _instrument(trainer, run, record)
    trainer.train()
    for step in range(config.num_steps, DATA_STEPS):
      trainer.task.train_batch(step)
    final = trainer.final_parameters(trainer.state)
    for j, leaf in enumerate(jax.tree.leaves(final)):
      record[f"run{run}/final/{j}"] = np.asarray(leaf)
  # `_worker0` reads worker 0 on every process, not each process's first.
  rows = trainer.workers.put(np.arange(NUM_WORKERS, dtype=np.float32))
  assert float(train._worker0(rows)) == 0.0, train._worker0(rows)
  jax.effects_barrier()
  np.savez(out / f"record{jax.process_index()}.npz", **record)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _load(directory: pathlib.Path) -> dict:
  record = {}
  for path in sorted(directory.glob("record*.npz")):
    with np.load(path) as saved:
      for name in saved.files:
        if name in record:  # Final parameters: every process has them.
          np.testing.assert_array_equal(saved[name], record[name], name)
        record[name] = saved[name]
  return record


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  env = dict(os.environ, **_ENV)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")

  def start(devices, *args):
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        env=dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count="
                 f"{devices}"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  processes = [start(NUM_WORKERS // 2, "--out", str(tmp_path / "multi"),
                     "--port", str(port), "--process-id", str(i))
               for i in range(2)]
  processes.append(start(NUM_WORKERS, "--out", str(tmp_path / "single")))
  deadline = time.monotonic() + 900
  outputs = [p.communicate(timeout=max(1, deadline - time.monotonic()))[0]
             for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-4000:]

  multi, single = _load(tmp_path / "multi"), _load(tmp_path / "single")
  assert sorted(multi) == sorted(single)
  for kind in ("batch", "key", "params", "local_grad", "mean_grad", "final"):
    assert any(f"/{kind}/" in name for name in single), kind
  for name, expected in sorted(single.items()):
    actual = multi[name]
    run, kind, *rest = name.split("/")
    if kind in ("batch", "key") or (kind in ("params", "local_grad")
                                    and rest[0] == "step0"):
      # The same data, keys and step-0 computation on every worker.
      np.testing.assert_array_equal(actual, expected, name)
    elif kind == "mean_grad":
      # The all-reduced gradient of each layout is the mean of that layout's
      # 8 local gradients, summed in some order: within γ_7·mean|g_k| of the
      # exact mean, elementwise (dividing by 8 is exact). At step 0 the local
      # gradients are the same, so the layouts are within twice that.
      step, worker, leaf = rest
      for layout, record in (("multi", multi), ("single", single)):
        local = np.stack([
            record[f"{run}/local_grad/{step}/worker{k}/{leaf}"]
            for k in range(NUM_WORKERS)]).astype(np.float64)
        bound = _GAMMA * np.abs(local).mean(0) + 1e-38
        error = np.abs(record[name] - local.mean(0))
        assert np.all(error <= bound), (
            f"{layout} {name}: all-reduce error {error.max():.3g}, "
            f"{np.max(error / bound):.3g} times the γ_7·mean|g_k| bound")
      if step == "step0":
        error = np.abs(actual.astype(np.float64) - expected)
        assert np.all(error <= 2 * bound), (name, error.max())
    elif kind == "final":
      # The all-reduce's rounding (< γ_7 ≈ 4e-7 relative per step) through
      # one LARS step or three smooth LSTM steps: measured at most 1.2e-7.
      np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6,
                                 err_msg=name)
    elif kind not in ("local_grad", "params"):
      raise AssertionError(f"unchecked record {name}")


def _main(args) -> None:
  if args.process_id is not None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                               num_processes=2, process_id=args.process_id)
    assert jax.local_device_count() == NUM_WORKERS // 2
  assert jax.device_count() == NUM_WORKERS
  _train_all(pathlib.Path(args.out))


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--process-id", type=int)
  parser.add_argument("--port", type=int)
  _main(parser.parse_args())
