"""2 processes x 4 CPU devices (jax.distributed, gloo) follow 1 process x 8.

The test starts this file three times: as the two processes of one
`jax.distributed` job and as one process with all 8 devices. Each records
what every worker is fed and computes (`_record_inputs`), trains the same toy
runs and records their final shared parameters; the test then compares the
two layouts:

- bit for bit: the initial parameters and, for each of the first 3 steps,
  every worker's batch, random key and local gradient at the initial
  parameters (the same inputs and per-device program; see `_ENV`);
- within the float32 bound of summing 8 terms in any order: the all-reduced
  gradient, which gloo and the in-process all-reduce add in different orders;
- at rtol 1e-5: the final parameters, in runs that do not amplify that
  rounding (see `_runs`).
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

from experiments import configs
from experiments import train
from experiments import worker_arrays

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
# Slack for flushed subnormals.
_TINY = NUM_WORKERS * float(np.finfo(np.float32).tiny)


def _runs():
  """Toy runs with K=8 workers: one per device in both layouts."""
  # Classification: batches made on the devices from the global step. One
  # step only: after it the layouts' parameters differ in the last bits (the
  # all-reduce), so do the next forward passes, and a ReLU input closer to
  # zero than that flips sign and changes its worker's gradient
  # discontinuously. ResNet's 300k ReLU inputs per worker make that likely
  # (about 0.2 flips expected per step, measured): one input at 2e-9 at step
  # 2 moved worker 6's stem and stage-1 gradients by 0.5%, and the first
  # kernel after 3 steps by up to 0.47%.
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


def _rows(tree) -> list:
  """(worker, leaf index, that worker's row) of a stacked tree, this process's."""
  rows = []
  for j, leaf in enumerate(jax.tree.leaves(tree)):
    for shard in leaf.addressable_shards:
      data = np.asarray(shard.data)
      for i, worker in enumerate(range(leaf.shape[0])[shard.index[0]]):
        rows.append((worker, j, data[i]))
  return rows


def _record_inputs(setup: train.Setup, run: int, record: dict) -> None:
  """What each worker is fed and computes at the initial parameters.

  Per step t < DATA_STEPS: the batch (`task.train_batch(t)`, as the trainer
  gets it), the worker's random key and local gradient, both through the
  trainer's own loss closure, and the gradient's all-reduced mean.
  """
  task, axis, keys = setup.task, setup.workers.axis_name, []
  loss = task.loss

  def keyed_loss(params, model_state, batch, rng, step):
    keys.append(rng)
    return loss(params, model_state, batch, rng, step)

  def worker_view(params, model_state, batch, step):
    loss_fn = train.worker_loss(task, setup.dropout_key, axis, model_state,
                                batch, step)
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    return (jax.random.key_data(keys.pop()), grads,
            jax.lax.pmean(grads, axis))

  view = setup.workers.map(worker_view, in_axes=(0, 0, 0, None))
  state = train.init_state(setup)
  for worker, j, row in _rows(state["params"]):
    record[f"run{run}/params/step0/worker{worker}/{j}"] = row
  task.loss = keyed_loss
  try:
    for step in range(DATA_STEPS):
      batch = task.train_batch(step)
      outputs = dict(zip(("key", "local_grad", "mean_grad"), view(
          state["params"], state["model_state"], batch, step)))
      for kind, tree in dict(batch=batch, **outputs).items():
        for worker, j, row in _rows(tree):
          record[f"run{run}/{kind}/step{step}/worker{worker}/{j}"] = row
  finally:
    task.loss = loss


def _train_all(out: pathlib.Path) -> None:
  record = {}
  for run, config in enumerate(_runs()):
    setup = train.set_up(config)
    _record_inputs(setup, run, record)
    state = train.train_and_evaluate(config, out / config.name,
                                     setup=setup).state
    final = train.final_parameters(setup, state)
    for j, leaf in enumerate(jax.tree.leaves(final)):
      record[f"run{run}/final/{j}"] = np.asarray(leaf)
  # `_worker0` (the smoothness probe's read) gives worker 0 on every process;
  # `addressable_data(0)` alone would be worker 4 on process 1.
  rows = setup.workers.put(np.arange(NUM_WORKERS, dtype=np.float32))
  assert float(worker_arrays.worker0(rows)) == 0.0, worker_arrays.worker0(rows)
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
  try:
    outputs = [p.communicate(timeout=max(1, deadline - time.monotonic()))[0]
               for p in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-4000:]

  multi, single = _load(tmp_path / "multi"), _load(tmp_path / "single")
  assert sorted(multi) == sorted(single)
  for kind in ("batch", "key", "params", "local_grad", "mean_grad", "final"):
    assert any(f"/{kind}/" in name for name in single), kind
  for name, expected in sorted(single.items()):
    actual = multi[name]
    run, kind, *rest = name.split("/")
    if kind in ("batch", "key", "params", "local_grad"):
      # The same data and keys, and the same computation on them.
      np.testing.assert_array_equal(actual, expected, name)
    elif kind == "mean_grad":
      # The all-reduced gradient of each layout is the mean of that layout's
      # 8 local gradients, summed in some order: within γ_7·mean|g_k| of the
      # exact mean, elementwise (dividing by 8 is exact).
      step, worker, leaf = rest
      for layout, record in (("multi", multi), ("single", single)):
        local = np.stack([
            record[f"{run}/local_grad/{step}/worker{k}/{leaf}"]
            for k in range(NUM_WORKERS)]).astype(np.float64)
        bound = _GAMMA * np.abs(local).mean(0) + _TINY
        error = np.abs(record[name] - local.mean(0))
        assert np.all(error <= bound), (
            f"{layout} {name}: all-reduce error {error.max():.3g}, "
            f"{np.max(error / bound):.3g} times the γ_7·mean|g_k| bound")
      # The local gradients are the same: the layouts are within 2x that.
      error = np.abs(actual.astype(np.float64) - expected)
      assert np.all(error <= 2 * bound), (name, error.max())
    elif kind == "final":
      # The all-reduce's rounding (within 2·γ_7 ≈ 8e-7 of mean|g_k| per
      # step) through one LARS step or three smooth LSTM steps: measured at
      # most 5e-8, under 2% of this tolerance.
      np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6,
                                 err_msg=name)
    else:
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
