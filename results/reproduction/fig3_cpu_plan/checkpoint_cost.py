"""Checkpoint cost of the Figure-3 proxy's state (K=20, d=64, EXTRAP-ADAM).

usage (from the repository root):
  PYTHONPATH=. EXTRAP_OPTAX_DATA_DIR=../shared/data \
      python results/reproduction/fig3_cpu_plan/checkpoint_cost.py
"""
import os, pathlib, subprocess, sys, tempfile, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=20"
os.environ.setdefault("EXTRAP_OPTAX_DATA_DIR", "/work/shared/data")
import jax
from experiments import checkpointing, train
from experiments.configs import studies

config = studies.fig3_cpu().base
config.optimizer.method = "extrap_adam"
trainer = train.Trainer(config, tempfile.mkdtemp())
state = trainer.init_state()
jax.block_until_ready(state)
directory = pathlib.Path(tempfile.mkdtemp()) / "checkpoints"
checkpointer = checkpointing.Checkpointer(directory, max_to_keep=2)
for step in (55, 110, 165):
  t = time.perf_counter()
  checkpointer.save(step, state)
  print(f"save at step {step}: {time.perf_counter() - t:.1f} s", flush=True)
checkpointer.close()
print(subprocess.run(["du", "-sh", str(directory)], capture_output=True,
                     text=True).stdout)
