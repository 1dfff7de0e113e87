"""2 processes x 4 CPU devices (jax.distributed, gloo) follow 1 process x 8.

The test starts this file as two worker processes on localhost; each trains
the same toy runs through `jax.distributed` and process 0 saves the final
shared parameters. The parent trains the same runs on its own 8 devices.
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from experiments import configs
from experiments import train

REPO = pathlib.Path(__file__).resolve().parents[2]


def _runs():
  """Toy runs with K=8 workers: one per device in both layouts."""
  runs = []
  # Classification: batches made on the devices from the global step.
  classification = configs.get_preset("fig1", "toy").runs["extrap_sgd"]
  # Language model: process-local host batches (`Workers.put_process_local`).
  language_model = configs.get_preset("fig2", "toy").runs["extrap_sgd_k4"]
  language_model.workers.num_workers = 8
  for config in (classification, language_model):
    config.num_steps = 3
    config.probe_every_steps = 0
    config.checkpoint_every_steps = 0
    runs.append(config)
  return runs


def _train_all(out_dir: pathlib.Path) -> list:
  results = []
  for config in _runs():
    trainer = train.Trainer(config, out_dir / config.name)
    trainer.train()
    results.append(trainer.final_parameters(trainer.state))
  return results


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  processes = [
      subprocess.Popen(
          [sys.executable, __file__, "--process-id", str(i), "--port",
           str(port), "--out", str(tmp_path / "multi")],
          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-4000:]

  assert len(jax.devices()) == 8
  expected = _train_all(tmp_path / "single")
  with np.load(tmp_path / "multi" / "params.npz") as saved:
    for i, params in enumerate(expected):
      leaves = jax.tree.leaves(params)
      for j, leaf in enumerate(leaves):
        # gloo and the in-process all-reduce may add the 8 gradients in a
        # different order: equal up to float32 rounding.
        np.testing.assert_allclose(saved[f"run{i}_{j}"], leaf, rtol=1e-5,
                                   atol=1e-6)


def _worker(args) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                             num_processes=2, process_id=args.process_id)
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  out = pathlib.Path(args.out)
  results = _train_all(out)
  if jax.process_index() == 0:
    np.savez(out / "params.npz", **{
        f"run{i}_{j}": leaf for i, params in enumerate(results)
        for j, leaf in enumerate(jax.tree.leaves(params))})


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--out", required=True)
  _worker(parser.parse_args())
