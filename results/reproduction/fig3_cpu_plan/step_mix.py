"""Figure-3 proxy: NSTEPS training steps on the real Multi30k, in data order.

Times each step; the first step of each padded (source, target) length pair
includes its compilation. Prints the mean of the other steps (wall and this
process's CPU time) and an epoch's estimated time from its mix of lengths.

usage (from the repository root):
  PYTHONPATH=. EXTRAP_OPTAX_DATA_DIR=../shared/data \
      python results/reproduction/fig3_cpu_plan/step_mix.py K B NSTEPS METHOD [MODEL_KWARGS_JSON]
"""
import collections, json, os, sys, tempfile, time

K, B, NSTEPS, METHOD = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MODEL = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={K}"
os.environ.setdefault("EXTRAP_OPTAX_DATA_DIR", "/work/shared/data")
import jax
import numpy as np
from experiments import train
from experiments.configs import presets

config = presets.multi30k("small")
config.data.train_size = 0
config.data.eval_size = 0
config.workers.num_workers = K
config.workers.local_batch_size = B
config.model.kwargs.update(MODEL)
config.optimizer.method = METHOD
config.num_steps = 1000
config.progress_bar = False
t0 = time.perf_counter()
trainer = train.Trainer(config, tempfile.mkdtemp())
state = trainer.init_state()
jax.block_until_ready(state)
print(f"setup (data, model, init) {time.perf_counter() - t0:.1f} s; "
      f"{jax.device_count()} devices; params "
      f"{sum(x.size for x in jax.tree.leaves(state['params'])) // K:,}/worker")
batcher = trainer.task.batcher
per_shape, seen, compile_s, cpu = collections.defaultdict(list), set(), [], []
for step in range(NSTEPS):
  batch = trainer.task.train_batch(step)
  shape = (batch[0].shape[-1], batch[1].shape[-1])
  t, c = time.perf_counter(), time.process_time()
  state, metrics = trainer._train_step(state, batch, step)
  jax.block_until_ready(metrics)
  dt = time.perf_counter() - t
  if shape in seen:
    per_shape[shape].append(dt)
    cpu.append(time.process_time() - c)
  else:
    compile_s.append(dt)
  seen.add(shape)
# The epoch's shape mix, timed by the measured shapes' mean (tokens-weighted
# estimate for the unmeasured ones).
epoch_shapes = collections.Counter()
for step in range(batcher.steps_per_epoch):
  src, tgt = batcher.batch(step)
  epoch_shapes[(src.shape[-1], tgt.shape[-1])] += 1
rate = np.mean([np.mean(v) / (s[0] + s[1]) for s, v in per_shape.items()])
epoch_s = sum(n * (np.mean(per_shape[s]) if s in per_shape else rate * (s[0] + s[1]))
              for s, n in epoch_shapes.items())
steady = [d for v in per_shape.values() for d in v]
print(f"K={K} B={B} {METHOD} {MODEL}: {len(steady)} timed steps, mean "
      f"{np.mean(steady):.3f} s/step ({K * B / np.mean(steady):.0f} pairs/s); "
      f"CPU time {np.mean(cpu):.3f} s/step; first-of-shape steps (compile+run) {np.round(compile_s, 1).tolist()}")
print(f"epoch of {batcher.steps_per_epoch} steps: estimated {epoch_s:.1f} s "
      f"({batcher.steps_per_epoch * K * B / epoch_s:.0f} pairs/s); shapes "
      f"{dict(epoch_shapes)}; timed {dict((k, round(float(np.mean(v)), 3)) for k, v in per_shape.items())}")
