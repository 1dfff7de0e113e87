"""Fault injection: a trainer SIGKILLed at any moment, resumed, loses nothing.

Each killed run is a subprocess (this file, run as a script) that dies by
SIGKILL, at a random moment chosen by the parent or at a chosen point inside
a checkpoint save or a metrics write; then it is started again in the same
run directory, until it completes. The result must equal an uninterrupted
run: the final state bit for bit, `metrics.jsonl` and the TensorBoard scalars
record for record (every field but `throughput`, which is wall-clock time).
A damaged newest checkpoint must be reported and the previous one used.

The random moments come from a seed printed in every failure message; set
`EXTRAP_OPTAX_CRASH_SEED` to replay one.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # Run as a script, this file is the child.

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing
from experiments import metrics_log
from experiments import configs
from experiments import report
from experiments import train
from tests import event_files

NUM_STEPS = 8


def make_config():
  # BatchNorm statistics, augmentation and per-worker noise keyed by step.
  config = configs.get_preset("table1", "toy").runs[
      "resnet20_extrap_uniform_noise"]
  config.num_steps = NUM_STEPS
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 3
  config.log_every_steps = 1
  config.eval_every_steps = 4
  config.progress_bar = False
  return config


def _kill_self():
  os.kill(os.getpid(), signal.SIGKILL)


def child(run_dir: str, fault: str) -> None:
  """Trains in `run_dir`, dying by SIGKILL at `fault` ("none": never).

  `save:N`: just after the N-th checkpoint save of this process started
  (orbax still writing it in the background); `metrics:N`: halfway through
  writing the N-th metrics line.
  """
  kind, _, count = fault.partition(":")
  calls = {"n": 0}

  def countdown():
    calls["n"] += 1
    return calls["n"] == int(count)

  if kind == "save":
    original_save = checkpointing.Checkpointer.save

    def save_then_die(self, step, state):
      original_save(self, step, state)
      if countdown():
        _kill_self()

    checkpointing.Checkpointer.save = save_then_die
  elif kind == "metrics":
    original_write = metrics_log.MetricsLog.write

    def write_half_then_die(self, record):
      if not countdown():
        return original_write(self, record)
      line = json.dumps(record) + "\n"
      with open(self.path, "a") as f:
        f.write(line[:len(line) // 2])
      _kill_self()

    metrics_log.MetricsLog.write = write_half_then_die
  train.train_and_evaluate(make_config(), run_dir)


def _start(run_dir, fault="none"):
  # The children inherit conftest's persistent compilation cache: each
  # restart loads the programs the first one compiled.
  return subprocess.Popen(
      [sys.executable, __file__, str(run_dir), fault], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_to_end(run_dir, fault="none"):
  process = _start(run_dir, fault)
  output, _ = process.communicate(timeout=600)
  return process.returncode, output


def _kill_at_random_moment(run_dir, rng):
  """Starts a run and SIGKILLs it at a random moment after its first step."""
  process = _start(run_dir)
  metrics = pathlib.Path(run_dir) / "metrics.jsonl"
  start = time.monotonic()
  records_before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
  while process.poll() is None and time.monotonic() - start < 600:
    if metrics.exists() and len(metrics.read_text().splitlines()) > records_before:
      time.sleep(rng.uniform(0.0, 1.5))
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  output, _ = process.communicate(timeout=600)
  return process.returncode, output


def _without_throughput(records):
  return [{k: v for k, v in r.items() if k != "throughput"} for r in records]


def _final_state(run_dir):
  setup = train.set_up(make_config())
  checkpointer = checkpointing.Checkpointer(run_dir / "checkpoints",
                                            max_to_keep=3)
  assert checkpointer.latest_step() == NUM_STEPS
  state = checkpointer.restore(NUM_STEPS, train.init_state(setup))
  checkpointer.close()
  return jax.tree.map(np.asarray, state)


def _assert_same_run(run_dir, reference_dir, context):
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["status"] == "completed", context
  jax.tree.map(np.testing.assert_array_equal, _final_state(run_dir),
               _final_state(reference_dir))
  got = _without_throughput(report.read_metrics(run_dir))
  want = _without_throughput(report.read_metrics(reference_dir))
  assert got == want, context
  scalars, counts = event_files.tensorboard_scalars(run_dir / "tb")
  want_scalars, _ = event_files.tensorboard_scalars(reference_dir / "tb")
  assert max(counts.values()) == 1, (context, "duplicated TensorBoard records")
  assert (event_files.without_throughput(scalars)
          == event_files.without_throughput(want_scalars)), context
  return summary


def _reference(tmp_path_factory):
  directory = tmp_path_factory.getbasetemp() / "crash-reference"
  if not (directory / "summary.json").exists():
    code, output = _run_to_end(directory)
    assert code == 0, output
  return directory


def _seed():
  return int(os.environ.get("EXTRAP_OPTAX_CRASH_SEED", time.time_ns() % 10**6))


def test_killed_at_random_moments_and_inside_saves_and_writes(
    tmp_path, tmp_path_factory):
  reference = _reference(tmp_path_factory)
  seed = _seed()
  rng = random.Random(seed)
  run_dir = tmp_path / "killed"
  context = f"EXTRAP_OPTAX_CRASH_SEED={seed}"
  kills = []
  # Two random moments, then one kill inside a checkpoint save and one
  # halfway through a metrics line, each at a random count of its events.
  for fault in ("random", "random", f"save:{rng.randint(1, 2)}",
                f"metrics:{rng.randint(1, 6)}"):
    if fault == "random":
      code, output = _kill_at_random_moment(run_dir, rng)
    else:
      code, output = _run_to_end(run_dir, fault)
    kills.append((fault, code))
    if code == 0:
      continue  # The run finished before the kill; the next start resumes it.
    assert code == -signal.SIGKILL, (context, fault, output)
  code, output = _run_to_end(run_dir)
  assert code == 0, (context, kills, output)
  _assert_same_run(run_dir, reference, (context, kills))
  assert any(code == -signal.SIGKILL for _, code in kills), (context, kills)


def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(
    tmp_path, tmp_path_factory):
  reference = _reference(tmp_path_factory)
  run_dir = tmp_path / "damaged"
  code, output = _run_to_end(run_dir, "save:3")  # Dies once step 6 is saving.
  assert code == -signal.SIGKILL, output
  checkpoints = run_dir / "checkpoints"
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps[-1] >= 4, steps
  newest = checkpoints / str(steps[-1])
  if not (newest / checkpointing.DIGEST_FILE).exists():
    # Killed between the end of the save and its digest: digest it now, so
    # that the damage below is what the check has to find.
    digests = checkpointing._file_digests(newest)
    (newest / checkpointing.DIGEST_FILE).write_text(json.dumps(digests))
  data = max((p for p in newest.rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

  code, output = _run_to_end(run_dir)
  assert code == 0, output
  assert f"Checkpoint {newest}" in output and "sha256" in output, output
  summary = _assert_same_run(run_dir, reference, "damaged checkpoint")
  assert len(summary["checkpoint_problems"]) == 1
  assert f"Checkpoint {newest}" in summary["checkpoint_problems"][0]
  quarantined = list((run_dir / "checkpoints.corrupt").iterdir())
  assert [p.name.split("-")[0] for p in quarantined] == [str(steps[-1])]


def test_unreadable_checkpoint_without_digest_is_detected(tmp_path):
  state = {"w": jnp.arange(64.0), "b": jnp.ones((4, 4))}
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  checkpointer.save(1, state)
  checkpointer.save(2, jax.tree.map(lambda x: x + 1, state))
  checkpointer.close()
  newest = tmp_path / "2"
  (newest / checkpointing.DIGEST_FILE).unlink()
  for path in newest.rglob("*"):
    if path.is_file() and path.parent.name == "d":  # The array data.
      path.write_bytes(b"")
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  step, restored, problems = checkpointer.restore_latest(state)
  checkpointer.close()
  assert step == 1 and len(problems) == 1 and "cannot be read" in problems[0]
  np.testing.assert_array_equal(restored["w"], np.arange(64.0))


def test_keeping_fewer_than_two_checkpoints_is_refused(tmp_path):
  with pytest.raises(ValueError, match="keep_checkpoints=1: keep at least 2"):
    checkpointing.Checkpointer(tmp_path, max_to_keep=1)


if __name__ == "__main__":
  child(sys.argv[1], sys.argv[2])
