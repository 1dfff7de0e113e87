"""Runs every benchmark, each in its own process, and writes one combined report.

Each benchmark sets its own XLA flags (fake CPU devices) before importing jax,
hence the separate processes. Arguments after `--` go to every benchmark, e.g.
`python -m benchmarks -- --rounds 5`; `--only NAME ...` picks some;
`--large` adds the 100M-parameter tree to the optimizer benchmark and
`--profile` and `--xla-sweep` the operation profile and the XLA flag sweep to
the throughput benchmark.

Writes `benchmarks/results/<date>-<device>.md` and `.json` (or into `--out-dir`),
joining the per-benchmark files of this run. Run it from the repository root:
the benchmarks are part of the checkout, not of the installed library.
"""

import argparse
import datetime
import json
import subprocess
import sys

from benchmarks import common

BENCHMARKS = ("optimizer_cost", "train_overhead", "virtual_workers", "throughput")


def main() -> None:
  """Runs the benchmarks and joins their results."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
  parser.add_argument("--large", action="store_true")
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--xla-sweep", action="store_true")
  parser.add_argument("rest", nargs="*", help="arguments for every benchmark")
  common.add_out_dir_argument(parser)
  args = parser.parse_args()
  written = []
  for name in args.only:
    extra = {"optimizer_cost": ["--large"] if args.large else [],
             "throughput": (["--profile"] if args.profile else [])
                           + (["--xla-sweep"] if args.xla_sweep else [])}.get(name, [])
    output = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *extra,
         "--out-dir", str(args.out_dir), *args.rest],
        check=True, capture_output=True, text=True).stdout
    print(output)
    line = next(l for l in output.splitlines() if l.startswith("wrote "))
    written.append(line[len("wrote "):].split(" and ")[0])
  date = datetime.date.today().isoformat()
  tag = json.loads(open(written[0][:-3] + ".json").read())["device"]["tag"]
  stem = args.out_dir / f"{date}-{tag}"
  stem.with_suffix(".md").write_text(
      f"# extrap_optax benchmarks, {date}, {tag}\n\n"
      + "\n".join(open(path).read() for path in written))
  stem.with_suffix(".json").write_text(json.dumps(
      [json.loads(open(path[:-3] + ".json").read()) for path in written], indent=1))
  print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
  main()
