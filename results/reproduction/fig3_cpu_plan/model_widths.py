"""Figure-3 proxy: a fixed-shape step at two model widths (K=20 x B=64), then
one run's evaluations at d=64 (validation loss twice, then with test BLEU).

usage (from the repository root):
  PYTHONPATH=. EXTRAP_OPTAX_DATA_DIR=../shared/data \
      python results/reproduction/fig3_cpu_plan/model_widths.py
"""
import os, sys, tempfile, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=20"
os.environ.setdefault("EXTRAP_OPTAX_DATA_DIR", "/work/shared/data")
import jax
import numpy as np
from experiments import train
from experiments.configs import presets

def trainer_for(model):
  config = presets.multi30k("small")
  config.data.train_size = config.data.eval_size = 0
  config.data.bleu_at_every_eval = False
  config.workers.num_workers, config.workers.local_batch_size = 20, 64
  config.model.kwargs.update(model)
  config.optimizer.method = "extrap_adam"
  config.num_steps = 1000
  config.progress_bar = False
  return train.Trainer(config, tempfile.mkdtemp())

for model in ({}, dict(d_model=64, d_ff=256, num_heads=4)):
  trainer = trainer_for(model)
  state = trainer.init_state()
  batch = trainer.task.train_batch(1)   # shape (16, 24), the commonest kind
  times = []
  for i in range(4):
    t, c = time.perf_counter(), time.process_time()
    state, metrics = trainer._train_step(state, batch, i)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t, time.process_time() - c))
  print(f"model {model or 'small (d128)'}: batch {batch[0].shape[1:]}/"
        f"{batch[1].shape[-1]}; first step {times[0][0]:.1f} s; then wall "
        f"{np.mean([w for w, _ in times[1:]]):.2f} s, CPU "
        f"{np.mean([c for _, c in times[1:]]):.2f} s a step", flush=True)
for final in (False, False, True):
  t, c = time.perf_counter(), time.process_time()
  metrics = trainer.evaluate(state, final=final)
  print(f"(d64) evaluate(final={final}): {time.perf_counter() - t:.1f} s wall, "
        f"{time.process_time() - c:.1f} s CPU {metrics}", flush=True)
