"""Shared benchmark machinery: interleaved timing, paired ratios, result files.

Every benchmark compares candidates against a baseline measured side by side in
the same process. Candidates run round-robin (one timed block of each per round,
the order rotated every round), so that drift in the machine's load (other jobs
on the same cores, clock changes) hits all of them alike. For each round the
candidate's time is divided by the baseline's time of the same round; the
reported ratio is the median of these paired ratios and the spread is their
interquartile range. A ratio is "resolved" when 1 lies outside that range, i.e.
when the spread over repeats is smaller than the difference it claims.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# The benchmarks run from a checkout of the repository (they are not installed),
# so their results land in the checkout unless `--out-dir` says otherwise.
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def add_out_dir_argument(parser: argparse.ArgumentParser) -> None:
  """Adds `--out-dir`, the directory for the result files."""
  parser.add_argument(
      "--out-dir", type=pathlib.Path, default=RESULTS_DIR,
      help="where to write the result files (default: benchmarks/results/)")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
  """The command-line settings to record with the results (not where they go)."""
  return {k: v for k, v in vars(args).items() if k != "out_dir"}


def use_fake_cpu_devices(count: int = 8) -> None:
  """Asks XLA:CPU for `count` fake devices; call before jax is imported.

  On a GPU machine the flag only affects the (unused) host platform.
  """
  flag = f"--xla_force_host_platform_device_count={count}"
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def device_description() -> dict[str, Any]:
  """The accelerator (or CPU) the default JAX backend runs on, in words and as a tag."""
  import jax  # pylint: disable=import-outside-toplevel

  device = jax.devices()[0]
  if device.platform == "cpu":
    cores = os.cpu_count()
    return {"platform": "cpu", "kind": platform.processor() or device.device_kind,
            "cores": cores, "tag": f"cpu-{cores}core",
            "jax_devices": len(jax.devices())}
  kind = device.device_kind
  tag = f"{device.platform}-{kind.lower().replace(' ', '-')}"
  return {"platform": device.platform, "kind": kind, "cores": os.cpu_count(),
          "tag": tag, "jax_devices": len(jax.devices())}


def time_interleaved(
    candidates: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    calls_per_round: int = 1,
    warmup: int = 2,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, np.ndarray]:
  """Times candidates round-robin; returns seconds per call, one entry per round.

  Args:
    candidates: name -> a function doing one call and waiting for its result
      (stateful steps keep their state in a closure).
    rounds: timed rounds; each runs `calls_per_round` calls of every candidate.
    calls_per_round: calls in one timed block (averaged).
    warmup: untimed calls of each candidate first (compilation, caches).
    cpu_times: if given, filled with name -> this process's CPU seconds per call
      (all threads), which other jobs on the same cores disturb less than the
      wall time.

  Returns:
    name -> array of shape (rounds,) of seconds per call.
  """
  names = list(candidates)
  for name in names:
    for _ in range(warmup):
      candidates[name]()
  samples = {name: [] for name in names}
  for r in range(rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      fn = candidates[name]
      start, cpu_start = time.perf_counter(), time.process_time()
      for _ in range(calls_per_round):
        fn()
      samples[name].append((time.perf_counter() - start) / calls_per_round)
      if cpu_times is not None:
        cpu_times.setdefault(name, []).append(
            (time.process_time() - cpu_start) / calls_per_round)
  return {name: np.asarray(values) for name, values in samples.items()}


@dataclasses.dataclass
class Result:
  """One measured quantity against its baseline.

  Attributes:
    benchmark: the script that measured it.
    case: what was measured (candidate and set-up).
    baseline: what it is compared with, measured side by side.
    metric: the measured quantity, e.g. "seconds/step" or "images/s".
    value: the candidate's median.
    baseline_value: the baseline's median.
    ratio: median over rounds of the paired ratio (see `ratio_is`).
    ratio_q25: lower quartile of the paired ratios.
    ratio_q75: upper quartile of the paired ratios.
    ratio_is: how the ratio is oriented, e.g. "time / baseline time".
    spread: (q75 − q25) / 2 / ratio, the relative half-IQR of the ratio.
    resolved: whether 1 lies outside [q25, q75].
    goal: the target, in words, or "".
    meets_goal: whether the median meets the goal (None without a goal).
    extra: further numbers (bytes, cost analysis, IQRs).
    note: anything the reader must know.
  """
  benchmark: str
  case: str
  baseline: str
  metric: str
  value: float
  baseline_value: float
  ratio: float
  ratio_q25: float
  ratio_q75: float
  ratio_is: str
  spread: float
  resolved: bool
  goal: str = ""
  meets_goal: bool | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  note: str = ""


def iqr(values: np.ndarray) -> tuple[float, float]:
  """The 25th and 75th percentiles."""
  q25, q75 = np.percentile(values, [25, 75])
  return float(q25), float(q75)


def paired_result(
    benchmark: str,
    case: str,
    baseline: str,
    times: np.ndarray,
    baseline_times: np.ndarray,
    *,
    work: float = 1.0,
    unit: str = "s",
    higher_is_better: bool = False,
    goal: str = "",
    goal_fn: Callable[[float], bool] | None = None,
    extra: dict[str, Any] | None = None,
    note: str = "",
    cpu_times: Sequence[float] | None = None,
    baseline_cpu_times: Sequence[float] | None = None,
) -> Result:
  """A `Result` from per-round times of a candidate and its baseline.

  Args:
    benchmark: the script's name.
    case: the candidate.
    baseline: the baseline.
    times: the candidate's seconds per call, one per round.
    baseline_times: the baseline's seconds per call, same rounds.
    work: items per call (images, tokens) for a throughput metric; with
      `higher_is_better` the metric is `work / time` in `unit`.
    unit: the metric's name.
    higher_is_better: report throughput (ratio = baseline time / time) rather
      than time (ratio = time / baseline time).
    goal: the target in words.
    goal_fn: ratio -> whether the goal is met.
    extra: further numbers.
    note: a remark.
    cpu_times: the candidate's CPU seconds per call, per round (optional).
    baseline_cpu_times: the baseline's, same rounds.

  Returns:
    The `Result`.
  """
  if higher_is_better:
    paired = baseline_times / times
    value, base = work / np.median(times), work / np.median(baseline_times)
    ratio_is = "throughput / baseline throughput"
  else:
    paired = times / baseline_times
    value, base = float(np.median(times)), float(np.median(baseline_times))
    ratio_is = "time / baseline time"
  ratio = float(np.median(paired))
  q25, q75 = iqr(paired)
  info = {"rounds": int(len(times)),
          "value_iqr": [float(x) for x in (
              iqr(work / times) if higher_is_better else iqr(times))],
          "baseline_iqr": [float(x) for x in (
              iqr(work / baseline_times) if higher_is_better else iqr(baseline_times))]}
  if cpu_times is not None and baseline_cpu_times is not None:
    cpu_paired = np.asarray(cpu_times) / np.asarray(baseline_cpu_times)
    if higher_is_better:
      cpu_paired = 1.0 / cpu_paired
    info["cpu_time_ratio"] = float(np.median(cpu_paired))
    info["cpu_time_ratio_iqr"] = list(iqr(cpu_paired))
  info.update(extra or {})
  return Result(
      benchmark=benchmark, case=case, baseline=baseline, metric=unit,
      value=float(value), baseline_value=float(base), ratio=ratio,
      ratio_q25=q25, ratio_q75=q75, ratio_is=ratio_is,
      spread=(q75 - q25) / 2 / ratio, resolved=not q25 <= 1.0 <= q75,
      goal=goal, meets_goal=None if goal_fn is None else bool(goal_fn(ratio)),
      extra=info, note=note)


def static_result(
    benchmark: str, case: str, baseline: str, metric: str, value: float,
    baseline_value: float, *, goal: str = "", goal_fn=None,
    extra: dict[str, Any] | None = None, note: str = "",
) -> Result:
  """A `Result` for an exact quantity (bytes), which has no spread."""
  ratio = value / baseline_value
  return Result(
      benchmark=benchmark, case=case, baseline=baseline, metric=metric,
      value=float(value), baseline_value=float(baseline_value), ratio=ratio,
      ratio_q25=ratio, ratio_q75=ratio, ratio_is="value / baseline value",
      spread=0.0, resolved=ratio != 1.0, goal=goal,
      meets_goal=None if goal_fn is None else bool(goal_fn(ratio)),
      extra=extra or {}, note=note)


def _format_number(x: float) -> str:
  if x == 0 or 1e-3 <= abs(x) < 1e6:
    return f"{x:.4g}"
  return f"{x:.3e}"


def markdown_table(results: Sequence[Result]) -> str:
  """A Markdown table of results, one row each."""
  lines = [
      "| case | baseline | metric | value | baseline value | ratio | IQR of ratio "
      "| ± spread | resolved? | CPU-time ratio | goal | met? | note |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in results:
    met = "" if r.meets_goal is None else ("yes" if r.meets_goal else "**no**")
    lines.append(
        f"| {r.case} | {r.baseline} | {r.metric} | {_format_number(r.value)} | "
        f"{_format_number(r.baseline_value)} | {r.ratio:.3f} | "
        f"[{r.ratio_q25:.3f}, {r.ratio_q75:.3f}] | {100 * r.spread:.1f}% | "
        f"{'yes' if r.resolved else 'no (within spread)'} | "
        f"{_format_number(r.extra['cpu_time_ratio']) if 'cpu_time_ratio' in r.extra else ''}"
        f" | {r.goal} | {met} | "
        f"{r.note} |")
  return "\n".join(lines)


def environment() -> dict[str, Any]:
  """Versions, flags and load, recorded with every result file."""
  import jax  # pylint: disable=import-outside-toplevel

  info = {"python": platform.python_version(), "jax": jax.__version__,
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "load_average_at_end": os.getloadavg(),
          "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  try:
    info["git_commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=RESULTS_DIR.parent, check=False).stdout.strip()
  except OSError:
    info["git_commit"] = ""
  return info


def write_results(
    name: str,
    title: str,
    results: Sequence[Result],
    *,
    sections: Sequence[tuple[str, str]] = (),
    settings: dict[str, Any] | None = None,
    out_dir: pathlib.Path | None = None,
) -> pathlib.Path:
  """Prints the table and writes `<date>-<device>-<name>.md` and `.json`.

  Args:
    name: the benchmark's module name.
    title: a heading.
    results: the rows.
    sections: extra (heading, Markdown text) sections after the table.
    settings: the run's settings (sizes, rounds), recorded as given.
    out_dir: where to write; default `benchmarks/results/`.

  Returns:
    The path of the Markdown file.
  """
  device = device_description()
  env = environment()
  date = datetime.date.today().isoformat()
  out_dir = RESULTS_DIR if out_dir is None else out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  stem = out_dir / f"{date}-{device['tag']}-{name}"
  header = (
      f"## {title}\n\n"
      f"Device: {device['kind']} ({device['platform']}, {device['cores']} cores, "
      f"{device['jax_devices']} JAX device(s)); jax {env['jax']}; "
      f"{env['date_utc']}; load average at end {env['load_average_at_end']}.\n"
      f"XLA_FLAGS: `{env['XLA_FLAGS']}`. Settings: `{json.dumps(settings or {})}`.\n\n"
      "Ratio: median over rounds of the paired ratio (candidate and baseline timed "
      "in the same round); IQR: its interquartile range; ± spread: half the IQR "
      "relative to the ratio; resolved: 1 lies outside the IQR; CPU-time ratio: "
      "the same ratio of this process's CPU seconds (all threads), less disturbed "
      "by other jobs on the cores, oriented like the ratio.\n")
  text = header + "\n" + markdown_table(results) + "\n"
  for heading, body in sections:
    text += f"\n### {heading}\n\n{body}\n"
  print(text)
  stem.with_suffix(".md").write_text(text)
  stem.with_suffix(".json").write_text(json.dumps({
      "benchmark": name, "title": title, "device": device, "environment": env,
      "settings": settings or {},
      "results": [dataclasses.asdict(r) for r in results],
      "sections": dict(sections)}, indent=1, default=float))
  print(f"wrote {stem}.md and .json")
  return stem.with_suffix(".md")
