"""Training throughput, JAX against PyTorch on the same machine, model and batch.

- ResNet-20 (CIFAR, 272k parameters), batch `--batch` (128), one train step
  (forward, backward, Nesterov SGD with weight decay 1e-4): images/s. PyTorch
  eager (NCHW) is the baseline (goal: JAX ≥ it); PyTorch channels_last is shown
  too. JAX ways: one device (params, BN statistics and optimizer state
  donated), the same with XLA's own convolution kernel gradients instead of the
  model's default batch-chunked ones (`experiments.models.convolution`; also
  compared directly), and the same global batch split over the 8 fake CPU devices
  (`Workers`, one worker per device, mini-batch SGD: the "pmap trick"; note that
  BatchNorm then normalises over each device's share of the batch).
- 2-layer LSTM language model, hidden 128, vocabulary 33,278, tied embedding,
  dropout 0.4, batch 64 x BPTT 35: tokens/s, PyTorch (`nn.LSTM`) the baseline.

`--profile` adds where the JAX one-device step's time goes on XLA:CPU (a
`jax.profiler` trace, time per operation kind), with both kernel gradients.
`--xla-sweep` also re-runs the JAX one-device ResNet step in subprocesses under
other XLA flag sets (alternating, to cancel drift) and reports them against the
default flags. PyTorch is optional: without it its rows are skipped with a note
and the JAX one-device step is the baseline. Device-agnostic: on a GPU both
frameworks use it.

Run: `python -m benchmarks.throughput [--rounds N] [--profile] [--xla-sweep]`.
"""

from benchmarks import common

common.use_fake_cpu_devices(8)

# pylint: disable=wrong-import-position
import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import extrap_optax
from benchmarks import trees
from experiments import models

NAME = "throughput"
LR = 0.1
WEIGHT_DECAY = 1e-4
LSTM_BATCH, BPTT = 64, 35
XLA_KERNEL_GRAD = "JAX one device, XLA's kernel gradient"
SWEEP_FLAG_SETS = (
    "",
    "--xla_cpu_multi_thread_eigen=false",
)

try:
  import torch
  from torch import nn
except ImportError:  # PyTorch is optional.
  torch = None


# JAX.

def jax_resnet_one_device(batch, **model_kwargs):
  """A donated one-device ResNet-20 step with mini-batch SGD."""
  model, variables = trees.resnet20(**model_kwargs)
  tx = extrap_optax.minibatch_sgd(LR, weight_decay=WEIGHT_DECAY)
  step = jax.jit(trees.resnet_train_step(model, tx), donate_argnums=(0, 1, 2))
  state = {"p": variables["params"], "b": variables["batch_stats"]}
  state["o"] = tx.init(state["p"])
  device_batch = jax.device_put(batch)

  def call():
    state["p"], state["b"], state["o"], loss = step(
        state["p"], state["b"], state["o"], device_batch)
    jax.block_until_ready(loss)

  return call


def jax_resnet_split(batch, num_devices):
  """The same global batch split over devices, one worker each (`Workers`)."""
  model, variables = trees.resnet20()
  workers = extrap_optax.Workers(num_devices)
  tx = extrap_optax.minibatch_sgd(LR, weight_decay=WEIGHT_DECAY,
                                  axis_name=workers.axis_name)
  step = workers.map(trees.resnet_train_step(model, tx), donate_argnums=(0, 1, 2))
  state = {"p": workers.replicate(variables["params"]),
           "b": workers.replicate(variables["batch_stats"])}
  state["o"] = workers.map(tx.init)(state["p"])
  split = workers.split(batch)

  def call():
    state["p"], state["b"], state["o"], loss = step(
        state["p"], state["b"], state["o"], split)
    jax.block_until_ready(loss)

  return call


def jax_lstm():
  """A donated LSTM language-model step (dropout on, carry carried and detached)."""
  model = models.get_model("lstm")
  # Distinct buffers (the initial carry reuses one zeros array), to donate them.
  carry = jax.tree.map(jnp.copy, model.initial_carry(LSTM_BATCH))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, model.vocab_size, (LSTM_BATCH, BPTT + 1)),
                       jnp.int32)
  params = model.init(jax.random.key(0), tokens[:, :-1], carry, train=False)["params"]
  tx = extrap_optax.minibatch_sgd(LR)

  def loss_fn(params, carry, tokens, key):
    logits, carry = model.apply({"params": params}, tokens[:, :-1], carry, train=True,
                                rngs={"dropout": key})
    return models.language_model_loss(logits, tokens[:, 1:]), carry

  def step(params, opt_state, carry, tokens, key):
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, carry, tokens, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            jax.lax.stop_gradient(carry), loss)

  jitted = jax.jit(step, donate_argnums=(0, 1, 2))
  state = {"p": params, "o": tx.init(params), "c": carry, "t": 0}

  def call():
    state["t"] += 1
    state["p"], state["o"], state["c"], loss = jitted(
        state["p"], state["o"], state["c"], tokens, jax.random.key(state["t"]))
    jax.block_until_ready(loss)

  return call


# PyTorch.

def torch_device():
  """CUDA if available, else the CPU."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync():
  """Waits for queued CUDA work (nothing to do on the CPU)."""
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def torch_resnet20(num_classes: int = 10):
  """ResNet-20 as in `experiments.models.resnet` (1x1 conv + BN shortcuts)."""

  class Block(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = nn.Sequential()
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

  layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
  cin = 16
  for stage, cout in enumerate((16, 32, 64)):
    for block in range(3):
      layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
      cin = cout
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
  return nn.Sequential(*layers)


def torch_resnet_step(batch, channels_last: bool):
  """An eager PyTorch ResNet-20 train step (NCHW or channels_last)."""
  torch.manual_seed(0)
  device = torch_device()
  model = torch_resnet20().to(device)
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  labels = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True,
                        weight_decay=WEIGHT_DECAY)
  loss_fn = nn.CrossEntropyLoss()

  def call():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    opt.step()
    torch_sync()

  return call


def torch_lstm_step():
  """An eager PyTorch LSTM language-model step (tied weights, dropout 0.4)."""
  torch.manual_seed(0)
  device = torch_device()
  vocab, hidden = models.WIKITEXT2_VOCAB_SIZE, 128

  class LanguageModel(nn.Module):
    """Embedding - dropout - 2-layer LSTM - dropout - tied decoder."""

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, hidden)
      self.lstm = nn.LSTM(hidden, hidden, 2, dropout=0.4, batch_first=True)
      self.drop = nn.Dropout(0.4)
      self.decoder = nn.Linear(hidden, vocab)
      self.decoder.weight = self.embed.weight

    def forward(self, tokens, carry):
      out, carry = self.lstm(self.drop(self.embed(tokens)), carry)
      return self.decoder(self.drop(out)), carry

  model = LanguageModel().to(device)
  opt = torch.optim.SGD(model.parameters(), lr=LR)
  rng = np.random.default_rng(0)
  tokens = torch.from_numpy(rng.integers(0, vocab, (LSTM_BATCH, BPTT + 1))).to(device)
  zeros = torch.zeros(2, LSTM_BATCH, hidden, device=device)
  state = {"carry": (zeros, zeros)}
  loss_fn = nn.CrossEntropyLoss()

  def call():
    opt.zero_grad(set_to_none=True)
    logits, carry = model(tokens[:, :-1], state["carry"])
    loss = loss_fn(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    state["carry"] = tuple(c.detach() for c in carry)
    torch_sync()

  return call


# Profile.

def op_time_breakdown(call, steps: int = 5) -> dict[str, float]:
  """Milliseconds per step by XLA:CPU operation kind, from a profiler trace.

  An operation kind is the HLO name without its number (`transpose_copy_fusion`,
  `ynn_fusion`, ...). Times are summed over XLA's threads, so operations that
  run concurrently both count in full.
  """
  call()
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        call()
    trace = next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(trace))
  totals = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for event in line.events:
        if re.fullmatch(r"[\w.-]+", event.name):
          totals[re.sub(r"[.\d]+$", "", event.name)] += event.duration_ns / 1e6 / steps
  return dict(totals)


def profile_section(variants) -> tuple[str, dict]:
  """A table of the top operation kinds of the given steps (name -> call)."""
  breakdowns = {name: op_time_breakdown(call) for name, call in variants.items()}
  kinds = sorted(set().union(*breakdowns.values()),
                 key=lambda kind: -max(b.get(kind, 0.0) for b in breakdowns.values()))
  rows = ["| operation kind | " + " | ".join(f"{name}: ms/step (share)"
                                             for name in breakdowns) + " |",
          "| --- |" + " --- |" * len(breakdowns)]
  for kind in kinds[:10]:
    cells = []
    for breakdown in breakdowns.values():
      total = sum(breakdown.values())
      cells.append(f"{breakdown.get(kind, 0.0):.1f} ({breakdown.get(kind, 0.0) / total:.0%})")
    rows.append(f"| `{kind}` | " + " | ".join(cells) + " |")
  rows.append("| all | " + " | ".join(f"{sum(b.values()):.1f}"
                                       for b in breakdowns.values()) + " |")
  return "\n".join(rows), breakdowns


# Driver.

def xla_sweep(batch_size: int, rounds: int, repeats: int) -> tuple[str, list]:
  """The one-device JAX step under each XLA flag set, in alternating subprocesses."""
  samples = {flags: [] for flags in SWEEP_FLAG_SETS}
  for _ in range(repeats):
    for flags in SWEEP_FLAG_SETS:
      env = dict(os.environ)
      env["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
      out = subprocess.run(
          [sys.executable, "-m", "benchmarks.throughput", "--sweep-worker",
           "--batch", str(batch_size), "--rounds", str(rounds)],
          env=env, capture_output=True, text=True, check=True).stdout
      line = next(l for l in out.splitlines() if l.startswith("SWEEP "))
      samples[flags] += json.loads(line[len("SWEEP "):])
  base = np.asarray(samples[""])
  rows = ["| XLA flags | images/s median | IQR | ratio of medians vs default |",
          "| --- | --- | --- | --- |"]
  for flags, values in samples.items():
    values = batch_size / np.asarray(values)
    q25, q75 = common.iqr(values)
    rows.append(f"| `{flags or '(default)'}` | {np.median(values):.1f} | "
                f"[{q25:.1f}, {q75:.1f}] | "
                f"{np.median(values) / np.median(batch_size / base):.3f} |")
  return "\n".join(rows), {k: list(v) for k, v in samples.items()}


def main(argv=None) -> None:
  """Runs the benchmark and writes the result files."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--lstm-rounds", type=int, default=9)
  parser.add_argument("--profile", action="store_true",
                      help="also break the JAX one-device step down by operation")
  parser.add_argument("--xla-sweep", action="store_true",
                      help="also compare XLA flag sets (subprocesses, minutes)")
  parser.add_argument("--sweep-repeats", type=int, default=2)
  parser.add_argument("--sweep-worker", action="store_true", help=argparse.SUPPRESS)
  common.add_out_dir_argument(parser)
  args = parser.parse_args(argv)
  batch = trees.cifar_batch(args.batch)
  if args.sweep_worker:
    times = common.time_interleaved({"jax": jax_resnet_one_device(batch)},
                                    rounds=args.rounds)
    print("SWEEP " + json.dumps([float(t) for t in times["jax"]]))
    return
  print(f"device: {jax.devices()[0]} ({len(jax.devices())} devices); "
        f"torch: {torch.__version__ if torch else 'not installed'}")

  notes = []
  resnet = {"JAX one device": jax_resnet_one_device(batch),
            XLA_KERNEL_GRAD: jax_resnet_one_device(
                batch, kernel_grad_chunk_size=None)}
  if len(jax.devices()) > 1:
    resnet[f"JAX batch split over {len(jax.devices())} devices"] = jax_resnet_split(
        batch, len(jax.devices()))
  lstm = {"JAX": jax_lstm()}
  if torch is not None:
    resnet["PyTorch eager"] = torch_resnet_step(batch, channels_last=False)
    resnet["PyTorch channels_last"] = torch_resnet_step(batch, channels_last=True)
    lstm["PyTorch eager"] = torch_lstm_step()
    notes.append(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads.")
  else:
    notes.append("PyTorch is not installed: its rows are skipped and the JAX "
                 "one-device step is the baseline.")
  resnet_base = "PyTorch eager" if torch is not None else "JAX one device"
  lstm_base = "PyTorch eager" if torch is not None else "JAX"

  results = []
  for label, calls, base, work, unit, rounds in (
      ("ResNet-20", resnet, resnet_base, args.batch, "images/s", args.rounds),
      ("LSTM LM", lstm, lstm_base, LSTM_BATCH * BPTT, "tokens/s", args.lstm_rounds)):
    cpu = {}
    times = common.time_interleaved(calls, rounds=rounds, cpu_times=cpu)
    for name in calls:
      if name == base:
        continue
      is_jax = name.startswith("JAX")
      results.append(common.paired_result(
          NAME, f"{label}: {name}", f"{label}: {base}", times[name], times[base],
          work=work, unit=unit, higher_is_better=True,
          goal="≥ 1" if is_jax and torch is not None else "",
          goal_fn=(lambda r: r >= 1.0) if is_jax and torch is not None else None,
          cpu_times=cpu[name], baseline_cpu_times=cpu[base],
          note=("BN over each device's 1/8 of the batch"
                if "split" in name else "")))
    if label == "ResNet-20":
      results.append(common.paired_result(
          NAME, f"{label}: JAX one device", f"{label}: {XLA_KERNEL_GRAD}",
          times["JAX one device"], times[XLA_KERNEL_GRAD], work=work, unit=unit,
          higher_is_better=True, cpu_times=cpu["JAX one device"],
          baseline_cpu_times=cpu[XLA_KERNEL_GRAD],
          note="the kernel gradient in batch chunks of 16 on CPU"))
  sections = [("Notes", " ".join(notes))]
  settings = common.settings_of(args)
  if args.profile and jax.default_backend() == "cpu":
    table, breakdowns = profile_section({
        "chunked kernel gradient (default)": resnet["JAX one device"],
        "XLA's kernel gradient": resnet[XLA_KERNEL_GRAD]})
    sections.append(("Where the JAX one-device step's time goes (XLA:CPU)", table + (
        "\n\nFrom a `jax.profiler` trace of 5 steps: time per step in each kind of "
        "XLA operation (its HLO name without the number), summed over XLA's "
        "threads. `ynn_fusion` and `convolution`/`conv_general_dilated` are "
        "convolutions (YNNPACK and Eigen); `transpose_copy_fusion` copies "
        "activations into the batch-minor layout of XLA's kernel-gradient "
        "convolution, re-computing the BatchNorm-ReLU-residual chain that "
        "produced them.")))
    settings = {**settings, "op_ms_per_step": breakdowns}
  if args.xla_sweep:
    table, samples = xla_sweep(args.batch, args.rounds, args.sweep_repeats)
    sections.append(("XLA flag sweep, JAX one-device ResNet-20 step", table + (
        "\n\nEach flag set ran in its own process (flags are read at start-up), "
        f"{args.sweep_repeats} alternating processes of {args.rounds} rounds each; "
        "the ratio is unpaired, so drift between processes is in it.")))
    settings = {**settings, "xla_sweep_seconds": samples}
  common.write_results(NAME, "Training throughput, JAX against PyTorch", results,
                       sections=sections, settings=settings, out_dir=args.out_dir)


if __name__ == "__main__":
  main()
