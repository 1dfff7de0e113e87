"""Command line: run the paper's presets, sweep their tuning grids, report.

    python -m experiments.main --preset fig1 --scale small       # = run ...
    python -m experiments.main run --preset table1 --scale paper --only resnet20_extrap_sgd
    python -m experiments.main run --preset fig1 --scale small \\
        --set optimizer.base_learning_rate=0.15 --set workers.num_workers=4
    python -m experiments.main sweep --preset table1 --scale small --dry-run
    python -m experiments.main report --runs runs/
    python -m experiments.main study --study fig1_cpu
    python -m experiments.main rerun runs/fig1-small/RUN/seed0/config.json --run-dir /tmp/again --max-steps 5
    python -m experiments.main list

Overrides: `--set dotted.key=value` (repeatable), or equivalently
`--config.dotted.key=value`, changes a field of every run of the preset. The
value is a Python literal (`0.1`, `(0.5, 0.75)`, `True`, `'tfds'`) or else a
bare string; ConfigDict checks that it has the field's type
(`experiments.configs.overrides`).

Runs go to `<runs-dir>/<preset>-<scale>/<run>/seed<k>/`. A run directory with
checkpoints is resumed; a completed one is skipped unless `--overwrite`.

Multi-host: start one process per host with `--coordinator HOST:PORT
--num-processes N --process-id I` (jax.distributed; on CPU the collectives go
through gloo). Every process runs the same command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS = ("run", "sweep", "study", "rerun", "report", "list")
# The checkout: presets name committed results relative to it.
REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _normalise_argv(argv: list[str]) -> list[str]:
  """`--config.a.b=v` -> `--set a.b=v`; a missing command means `run`."""
  out = []
  for arg in argv:
    if arg.startswith("--config."):
      out += ["--set", arg[len("--config."):]]
    else:
      out.append(arg)
  if not out or out[0] not in COMMANDS + ("-h", "--help"):
    out = ["run"] + out
  return out


def _parser() -> argparse.ArgumentParser:
  from experiments.configs import PRESETS, SCALES

  parser = argparse.ArgumentParser(
      prog="python -m experiments.main", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  for name in ("run", "sweep"):
    sub = commands.add_parser(name, help=f"{name} a preset")
    sub.add_argument("--preset", required=True, choices=sorted(PRESETS))
    sub.add_argument("--scale", default="small", choices=SCALES)
    sub.add_argument("--runs-dir", default="runs", type=pathlib.Path)
    sub.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config field")
    sub.add_argument("--only", nargs="+", default=None, metavar="RUN",
                     help="run only these runs of the preset")
    sub.add_argument("--seeds", default=None,
                     help="comma-separated seeds (default: the preset's)")
    sub.add_argument("--overwrite", action="store_true",
                     help="delete and redo completed runs")
    sub.add_argument("--dry-run", action="store_true",
                     help="list the runs without training")
    sub.add_argument("--coordinator", default=None, metavar="HOST:PORT")
    sub.add_argument("--num-processes", type=int, default=1)
    sub.add_argument("--process-id", type=int, default=0)
  study = commands.add_parser(
      "study", help="a reproduction study: tune, extrapolate, repeat seeds")
  study.add_argument("--study", required=True,
                     help="the study's name (experiments/configs/studies.py)")
  study.add_argument("--runs-dir", default="runs", type=pathlib.Path)
  study.add_argument("--report-dir", default=None, type=pathlib.Path,
                     help="where the report goes (default: "
                          "<runs-dir>/study-<name>/report)")
  study.add_argument("--max-steps", default=None, type=int,
                     help="train at most this many steps now; run the same "
                          "command again to continue")
  study.add_argument("--compared-runs", default=None, type=pathlib.Path,
                     help="the runs of the study this one is compared with "
                          "(its `compared_with`; default: <runs-dir>/study-"
                          "<that name>), e.g. results/reproduction/fig1_cpu/"
                          "runs")
  study.add_argument("--dry-run", action="store_true",
                     help="list the runs the current results call for")
  rerun = commands.add_parser(
      "rerun", help="train one run again from its saved config.json")
  rerun.add_argument("config", type=pathlib.Path,
                     help="a run's config.json (e.g. from results/)")
  rerun.add_argument("--run-dir", required=True, type=pathlib.Path,
                     help="where the new run goes (resumed if it has "
                          "checkpoints)")
  rerun.add_argument("--max-steps", default=None, type=int,
                     help="stop after this step (checkpointed; the same "
                          "command again continues)")
  report = commands.add_parser("report", help="tables and figures of runs")
  report.add_argument("--runs", required=True, type=pathlib.Path)
  report.add_argument("--out", default=None, type=pathlib.Path,
                      help="output directory (default: <runs>/report)")
  commands.add_parser("list", help="list the presets")
  return parser


def _request_cpu_devices(num_workers: int, num_processes: int) -> None:
  """Asks XLA for one CPU device per local worker, unless already set.

  A CPU-only JAX has one device, on which `extrap_optax.Workers` would vmap all
  K workers; one worker per (virtual) device is the fastest layout on XLA:CPU,
  1.2x the vmap backend on 2 cores (benchmarks/virtual_workers.py). The flag
  only shapes the host platform, so GPUs and TPUs are untouched. It must be set
  before jax is imported.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags or _backends_started():
    return
  count = max(1, num_workers // num_processes)
  os.environ["XLA_FLAGS"] = (
      f"{flags} --xla_force_host_platform_device_count={count}".strip())


def _backends_started() -> bool:
  """Whether jax has started its backends (then XLA_FLAGS is read already)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # No public API says it.

  return xla_bridge.backends_are_initialized()


def _workers_of(configs: Sequence[Any]) -> int:
  """The most workers any of `configs` asks for (1 for a bad value)."""
  counts = [c.workers.num_workers for c in configs]
  return max([n for n in counts if isinstance(n, int) and n > 0], default=1)


def _check_configs(configs: Sequence[Any], num_processes: int) -> None:
  """Exits with every invalid field of `configs` (jax's backends not started)."""
  from experiments.configs import validation
  for config in configs:
    try:
      validation.validate(config, num_processes=num_processes)
    except validation.ConfigError as error:
      raise SystemExit(f"error: {error}") from None


def _check_data(configs: Sequence[Any]) -> None:
  """Exits naming the first missing data file (imports jax: call it last)."""
  from experiments import tasks
  from experiments.input_pipeline import common
  for config in configs:
    try:
      tasks.check_data(config)
    except (common.MissingDataError, ValueError) as error:
      raise SystemExit(f"error: {error}") from None


def _initialize_distributed(args) -> None:
  if args.coordinator is None:
    return
  import jax

  # CPU processes exchange collectives through gloo; GPUs ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes,
                             process_id=args.process_id)


def preset_root(args) -> pathlib.Path:
  """`<runs-dir>/<preset>-<scale>`, with a `-sweep` suffix for sweeps."""
  suffix = "-sweep" if args.command == "sweep" else ""
  return args.runs_dir / f"{args.preset}-{args.scale}{suffix}"


def expand_runs(args) -> list[tuple[str, object, pathlib.Path]]:
  """(label, config, run directory) of every run the command asks for."""
  from experiments.configs import get_preset, overrides, tuning_grid

  preset = get_preset(args.preset, args.scale)
  seeds = (tuple(int(s) for s in args.seeds.split(",")) if args.seeds
           else preset.seeds)
  names = args.only or list(preset.runs)
  unknown = sorted(set(names) - set(preset.runs))
  if unknown:
    raise SystemExit(f"Unknown runs {unknown} in preset {args.preset}; it has "
                     f"{', '.join(preset.runs)}.")
  root = preset_root(args)
  runs = []
  for name in names:
    base = overrides.apply(preset.runs[name], overrides.parse(args.overrides))
    variants = [((), base)]
    if args.command == "sweep":
      grid = tuning_grid(base)
      variants = []
      for values in itertools.product(*grid.values()):
        tag = tuple(f"{key.split('.')[-1]}={value:g}"
                    for key, value in zip(grid, values))
        variants.append((tag, overrides.apply(base, dict(zip(grid, values)))))
    for tag, config in variants:
      for seed in seeds:
        run = config.copy_and_resolve_references()
        run.seed = seed
        label = "/".join((name,) + tag)
        directory = root / name / ",".join(tag) / f"seed{seed}" if tag else (
            root / name / f"seed{seed}")
        runs.append((label, run, directory))
  return runs


def run_command(args) -> int:
  """Trains (or lists) the runs; prints the preset's comparison."""
  runs = expand_runs(args)
  if args.dry_run:
    for label, config, directory in runs:
      print(f"{label:60s} seed={config.seed} -> {directory}")
    print(f"{len(runs)} runs.")
    return 0
  configs = [config for _, config, _ in runs]
  _request_cpu_devices(_workers_of(configs), args.num_processes)
  # Every run of the grid is checked before the first one starts.
  _check_configs(configs, args.num_processes)
  _check_data(configs)
  _initialize_distributed(args)
  from experiments import noise_reference
  from experiments import report
  from experiments import runs as runs_lib

  failures = 0
  for label, config, directory in runs:
    if (not args.overwrite
        and runs_lib.finished_summary(directory, ("completed",))):
      print(f"{label} seed {config.seed}: already completed in {directory}, "
            "skipped (--overwrite to redo).")
      continue
    if args.overwrite and directory.exists():
      shutil.rmtree(directory)
    print(f"== {label} seed {config.seed} -> {directory}")
    failures += runs_lib.train(config, directory)["status"] == "diverged"
  from experiments.configs import get_preset

  preset = get_preset(args.preset, args.scale)
  root = preset_root(args)
  text = report.compare(root, claimed_speedup=preset.claimed_speedup,
                        baseline=preset.reference)
  runs = report.load_runs(root)
  losses = [report.SHARED_LOSS]
  if runs and all(any(report.SHARED_LOSS_BATCH_STATS in r
                      for r in run["metrics"]) for run in runs):
    losses.append(report.SHARED_LOSS_BATCH_STATS)
    text += "\n" + report.compare(root, report.SHARED_LOSS_BATCH_STATS,
                                   preset.claimed_speedup, preset.reference)
  if runs and any(report.SHARED_LOSS in r for run in runs
                  for r in run["metrics"]):
    figure = report.plot_comparison(
        {name: [r for r in runs if r["summary"]["name"] == name]
         for name in dict.fromkeys(r["summary"]["name"] for r in runs)},
        root / "comparison.png",
        (report.SHARED_LOSS, report.SHARED_LOSS_BATCH_STATS))
    text += (f"\nFigure: {figure} (both methods on the same axes); each "
             "run's own curves are in its curves.png.\n")
  if preset.noise_reference and preset.baseline:
    # Both y-losses: the eval-mode one swings with BatchNorm's running
    # statistics at this constant rate, so one seed of it alone misleads.
    others = [name for name in preset.runs if name != preset.baseline]
    for name in others:
      for loss in losses:
        text += "\n" + noise_reference.compare_with_study(
            root, REPOSITORY / preset.noise_reference, preset.baseline, name,
            loss)
  if preset.see_also:
    text += f"\nOne seed per method at this size; {preset.see_also}.\n"
  print(text)
  (root / "comparison.md").write_text(text)
  return 1 if failures else 0


def rerun_command(args) -> int:
  """Trains the run that `args.config` describes, in `args.run_dir`.

  With `--max-steps N` it stops after step N: the first N steps of a
  committed run, to compare with its `metrics.jsonl`.
  """
  from experiments.configs import overrides

  if args.max_steps is not None and args.max_steps < 1:
    raise SystemExit(f"--max-steps={args.max_steps} must be positive.")
  try:
    config = overrides.load(args.config)
  except (FileNotFoundError, ValueError) as error:
    raise SystemExit(f"error: {error}") from None
  _request_cpu_devices(_workers_of([config]), 1)
  _check_configs([config], 1)
  _check_data([config])
  from experiments import runs

  summary = runs.train(config, args.run_dir, stop_at_step=args.max_steps)
  print(json.dumps(summary, indent=2))
  stopped_as_asked = (summary["status"] == "stopped"
                      and summary["steps"] == args.max_steps)
  return 0 if summary["status"] == "completed" or stopped_as_asked else 1


def study_command(args) -> int:
  """Runs (or continues) a study, then writes its report."""
  from experiments.configs import studies
  from experiments import study as study_lib
  from experiments import study_report

  study = studies.get_study(args.study)
  if args.max_steps is not None and args.max_steps < 1:
    raise SystemExit(f"--max-steps={args.max_steps} must be positive.")
  if args.compared_runs is not None and not study.compared_with:
    raise SystemExit(f"--compared-runs: the study {study.name!r} is not "
                     "compared with another one (its compared_with is "
                     "empty); drop the flag.")
  root = args.runs_dir / f"study-{study.name}"
  if not args.dry_run:
    _request_cpu_devices(_workers_of([study.base]), 1)
  _check_configs([study.base], 1)
  if not args.dry_run:
    _check_data([study.base])
  runner = study_lib.StudyRunner(study, root, max_steps=args.max_steps,
                                 dry_run=args.dry_run)
  try:
    choices = runner.execute()
    finished = not runner.planned and choices["seed_dirs"]
  except study_lib.BudgetExhausted as stop:
    print(f"Stopped: {stop}. Run the same command again to continue.")
    finished = False
  if args.dry_run:
    for label, directory in runner.planned:
      print(f"{label:50s} -> {directory}")
    print(f"{len(runner.planned)} runs next (later stages depend on their "
          "results).")
    return 0
  text = study_report.write_report(study, root,
                                   args.report_dir or root / "report",
                                   compared_root=args.compared_runs)
  print(text)
  if not finished:
    print("The study is not finished; the report shows the runs so far.")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of `python -m experiments.main`."""
  args = _parser().parse_args(_normalise_argv(
      list(sys.argv[1:] if argv is None else argv)))
  if args.command == "list":
    from experiments.configs import PRESETS, SCALES, get_preset

    for name in PRESETS:
      preset = get_preset(name, "paper")
      print(f"{name:7s} {len(preset.runs):3d} runs  {preset.description}")
    print(f"scales: {', '.join(SCALES)}")
    return 0
  if args.command == "report":
    from experiments import report

    print(report.write_report(args.runs, args.out))
    return 0
  if args.command == "study":
    return study_command(args)
  if args.command == "rerun":
    return rerun_command(args)
  return run_command(args)


if __name__ == "__main__":
  sys.exit(main())
