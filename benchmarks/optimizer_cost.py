"""What the extrapolated optimizers cost per update, and in memory.

For each parameter tree (ResNet-20, 272k parameters; with `--large`, a 100.7M
parameter Transformer-like tree, 403 MB per buffer), one jitted update
`params, state = apply(update(grads, state, params))` with params and state
donated, timed round-robin against the optax baseline on the same tree:

- SGD family (EXTRAP-SGD, its noise variants, post-local SGD, mini-batch SGD)
  against `optax.sgd(γ, 0.9, nesterov=True)`;
- EXTRAP-ADAM, the library's `adam` and DiLoCo (a local step, and an outer
  step on every step) against `optax.adam`.

Also reported, exactly (no spread): the bytes XLA's cost analysis says the
compiled update accesses, against the analytic memory floor (Nesterov SGD reads
g, p, buf and writes buf, p: 5 buffers; extrapolation adds the shared point's
read and write: 7; Adam reads g, p, m, v and writes m, v, p: 7; EXTRAP-ADAM: 9),
and the optimizer state bytes per worker against the baseline's. A streaming
reference (p ← p − γ·g, 3 buffers) gives the machine's achieved bandwidth, so
each update's time is also shown against its floor time (floor bytes / that
bandwidth).

Run: `python -m benchmarks.optimizer_cost [--large] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import extrap_optax
from benchmarks import common
from benchmarks import trees

NAME = "optimizer_cost"
LR = 0.1
# γ̂ = γ/K for K = 32, the paper's default c = 1.
EXTRAP_RATE = LR / 32


def sgd_candidates() -> dict[str, tuple[optax.GradientTransformation, int]]:
  """name -> (transformation, floor in parameter-sized buffers moved)."""
  return {
      "optax.sgd nesterov": (optax.sgd(LR, momentum=0.9, nesterov=True), 5),
      "minibatch_sgd (wd=0)": (extrap_optax.minibatch_sgd(LR), 5),
      "minibatch_sgd (wd=1e-4)": (extrap_optax.minibatch_sgd(LR, weight_decay=1e-4), 5),
      "extrap_sgd": (extrap_optax.extrap_sgd(LR, extrapolation_rate=EXTRAP_RATE), 7),
      **{f"noise_extrap_sgd {noise}": (extrap_optax.noise_extrap_sgd(
          LR, extrapolation_rate=EXTRAP_RATE, noise=noise), 7)
         for noise in ("uniform", "gaussian", "smoothout", "gradient")},
      **{f"noise_extrap_sgd {noise} counter_hash": (extrap_optax.noise_extrap_sgd(
          LR, extrapolation_rate=EXTRAP_RATE, noise=noise,
          generator="counter_hash"), 7)
         for noise in ("uniform", "gaussian", "smoothout")},
      "post_local_sgd (local phase, γ̂=0)": (extrap_optax.post_local_sgd(
          LR, start_step=0, sync_period=8), 7),
      "post_local_sgd + extrap (local phase)": (extrap_optax.post_local_sgd(
          LR, start_step=0, sync_period=8, extrapolation_rate=EXTRAP_RATE), 7),
  }


def adam_candidates() -> dict[str, tuple[optax.GradientTransformation, int]]:
  """name -> (transformation, floor in parameter-sized buffers moved)."""
  return {
      "optax.adam": (optax.adam(1e-3), 7),
      "adam (library)": (extrap_optax.adam(1e-3), 7),
      "extrap_adam": (extrap_optax.extrap_adam(1e-3, extrapolation_rate=1e-3 / 32), 9),
      # AdamW inner steps keep the worker's y beside z: Adam's 7 + 2.
      "diloco (local step)": (extrap_optax.diloco(1e-3, sync_period=10**6), 9),
      # Every step a round end: also read θ and the outer momentum, write
      # both: 9 + 4.
      "diloco (outer step every step)": (extrap_optax.diloco(1e-3, sync_period=1), 13),
  }


def _update_fn(tx: optax.GradientTransformation):
  def update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return update


def _bytes_accessed(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else {}
  value = (analysis or {}).get("bytes accessed")
  return None if value is None else float(value)


def _calls_per_block(call: Callable[[], None], min_block_s: float) -> int:
  """Calls of the streaming reference (the cheapest candidate) in `min_block_s`."""
  call()
  start = time.perf_counter()
  call()
  return max(1, int(min_block_s / max(time.perf_counter() - start, 1e-6)))


def _stepper(update: Callable, params, state, grads):
  """A no-argument function doing one donated update on its own copy of the state."""
  jitted = jax.jit(update, donate_argnums=(0, 1))
  compiled = jitted.lower(params, state, grads).compile()
  holder = {"p": jax.tree.map(jnp.copy, params), "s": jax.tree.map(jnp.copy, state)}

  def call():
    holder["p"], holder["s"] = compiled(holder["p"], holder["s"], grads)
    jax.block_until_ready(holder["p"])

  return call, compiled


def measure_tree(tree_name: str, params, rounds: int, min_block_s: float):
  """All results for one parameter tree."""
  n = trees.num_params(params)
  buffer_bytes = trees.tree_bytes(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  results, rows = [], []

  # Streaming reference: p ← p − γ·g, 3 buffers (read p, g; write p).
  stream_call, stream_compiled = _stepper(
      lambda p, s, g: (jax.tree.map(lambda a, b: a - LR * b, p, g), s), params, (),
      grads)

  for candidates in (sgd_candidates(), adam_candidates()):
    calls, meta = {"stream p-γg": stream_call}, {}
    for name, (tx, floor) in candidates.items():
      state = tx.init(params)
      call, compiled = _stepper(_update_fn(tx), params, state, grads)
      calls[name] = call
      meta[name] = {"floor_buffers": floor, "state_bytes": trees.tree_bytes(state),
                    "bytes_accessed": _bytes_accessed(compiled)}
    # Enough calls per timed block that dispatch jitter does not dominate.
    calls_per_round = _calls_per_block(stream_call, min_block_s)
    cpu = {}
    times = common.time_interleaved(calls, rounds=rounds, calls_per_round=calls_per_round,
                                    cpu_times=cpu)
    stream_time = float(np.median(times["stream p-γg"]))
    stream_bw = 3 * buffer_bytes / stream_time
    base_name = next(iter(candidates))
    base = meta[base_name]
    for name, info in meta.items():
      floor_bytes = info["floor_buffers"] * buffer_bytes
      floor_time = floor_bytes / stream_bw
      median = float(np.median(times[name]))
      extra = {"params": n, "bytes_accessed_xla": info["bytes_accessed"],
               "floor_bytes": floor_bytes, "stream_bandwidth_GBps": stream_bw / 1e9,
               "time_over_floor_time": median / floor_time,
               "calls_per_round": calls_per_round}
      if name != base_name:
        bound = info["floor_buffers"] / base["floor_buffers"]
        results.append(common.paired_result(
            NAME, f"{tree_name}: {name} update", f"{base_name} update", times[name],
            times[base_name], unit="s/update",
            goal=f"≤ {bound:.2f} (floor {info['floor_buffers']}/{base['floor_buffers']}) +2%",
            goal_fn=lambda r, b=bound: r <= 1.02 * b, extra=extra,
            cpu_times=cpu[name], baseline_cpu_times=cpu[base_name]))
        extra_buffers = (info["state_bytes"] - base["state_bytes"]) / buffer_bytes
        results.append(common.static_result(
            NAME, f"{tree_name}: {name} state bytes/worker",
            f"{base_name} state bytes", "bytes", info["state_bytes"],
            base["state_bytes"], goal="≤ baseline + 1 param buffer",
            # Scalars (step counts) are not parameter buffers: allow 1 KiB.
            goal_fn=lambda r, e=extra_buffers: e <= 1.0 + 1024 / buffer_bytes,
            extra={"extra_param_buffers": extra_buffers}))
      rows.append(
          f"| {tree_name} | {name} | {median * 1e3:.3f} | "
          f"{info['floor_buffers']} | {floor_bytes / 1e6:.2f} | "
          f"{(info['bytes_accessed'] or float('nan')) / 1e6:.2f} | "
          f"{(info['bytes_accessed'] or float('nan')) / floor_bytes:.2f} | "
          f"{median / floor_time:.2f} | {info['state_bytes'] / buffer_bytes:.2f} |")
    rows.append(
        f"| {tree_name} | stream p-γg (bandwidth reference: {stream_bw / 1e9:.1f} GB/s) | "
        f"{stream_time * 1e3:.3f} | 3 | "
        f"{3 * buffer_bytes / 1e6:.2f} | "
        f"{(_bytes_accessed(stream_compiled) or float('nan')) / 1e6:.2f} | "
        f"{(_bytes_accessed(stream_compiled) or float('nan')) / (3 * buffer_bytes):.2f} "
        "| 1.00 | 0 |")
  return results, rows


def main(argv=None) -> None:
  """Runs the benchmark and writes the result files."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--large", action="store_true",
                      help="also the 100.7M-parameter tree (403 MB per buffer)")
  parser.add_argument("--rounds", type=int, default=21)
  parser.add_argument("--large-rounds", type=int, default=7)
  parser.add_argument("--min-block-s", type=float, default=0.02,
                      help="minimum seconds per timed block of one candidate")
  common.add_out_dir_argument(parser)
  args = parser.parse_args(argv)
  print(f"device: {jax.devices()[0]}")

  _, variables = trees.resnet20()
  results, rows = measure_tree("ResNet-20 (272k)", variables["params"], args.rounds,
                               args.min_block_s)
  if args.large:
    more, more_rows = measure_tree("100.7M tree", trees.large_tree(), args.large_rounds,
                                   args.min_block_s)
    results += more
    rows += more_rows
  table = "\n".join([
      "| tree | update | median ms | floor (buffers) | floor MB | XLA bytes accessed MB "
      "| XLA / floor | time / floor time | state (param buffers) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows])
  common.write_results(
      NAME, "Optimizer update cost and memory", results,
      sections=[("Bytes moved per update and time against the memory floor", table + (
          "\n\nFloor: parameter-sized buffers each update must read or write "
          "(Nesterov SGD 5: read g, p, buf, write buf, p; extrapolation adds the "
          "shared point's read and write; Adam 7; EXTRAP-ADAM 9). Floor time = "
          "floor bytes / bandwidth of the streaming reference measured in the same "
          "rounds. XLA bytes accessed: `compile().cost_analysis()['bytes accessed']`, "
          "which counts every fusion's operands and results (random-number "
          "temporaries included); state: optimizer state bytes in parameter buffers."))],
      settings=common.settings_of(args), out_dir=args.out_dir)


if __name__ == "__main__":
  main()
