"""The repository's text: links that exist, a license, figures that match the results.

- No link to a repository that is not a real upstream project. The project has
  no public repository: every `github.com/<owner>/<repo>` (also through Colab
  or raw.githubusercontent.com) in a tracked text file must name a repository
  of KNOWN_REPOSITORIES, an explicit list of the real projects the text cites.
- The LICENSE file is the full Apache License 2.0 that pyproject.toml declares.
- The benchmark summaries of README.md and benchmarks/README.md are those that
  `benchmarks/summary.py` generates from the newest committed results, and,
  checked independently of that generator, every ratio they quote is in the
  newest result file of its benchmark.
"""

import json
import pathlib
import re
import subprocess
import tomllib

import pytest

from benchmarks import summary

REPO = pathlib.Path(__file__).resolve().parent.parent
# Real upstream repositories the text cites (the library's dependencies, the
# data's sources, the reference implementations). A repository not here fails.
KNOWN_REPOSITORIES = frozenset({
    "google-deepmind/optax",
    "jax-ml/jax",
    "google/flax",
    "google/orbax",
    "tensorflow/datasets",
    "NVIDIA/apex",
    "pytorch/examples",
    "pytorch/pytorch",
    "multi30k/dataset",
})
GITHUB_REPOSITORY = re.compile(
    r"(?:github\.com|raw\.githubusercontent\.com|colab\.research\.google\.com/github)"
    r"/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)")
TEXT_SUFFIXES = {".py", ".md", ".rst", ".ipynb", ".toml", ".txt", ".tsv", ".json",
                 ".cfg", ".yaml", ".yml", ".html"}


def _tracked_text_files():
  names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                         check=True, text=True).stdout.split("\0")
  for name in names:
    path = REPO / name
    if name and path.suffix in TEXT_SUFFIXES and path.is_file():
      yield path


def unknown_repository_links(text: str) -> list[str]:
  """The `owner/repo` of each GitHub link in `text` not in KNOWN_REPOSITORIES."""
  found = []
  for match in GITHUB_REPOSITORY.finditer(text):
    name = f"{match['owner']}/{match['repo'].removesuffix('.git')}"
    if name not in KNOWN_REPOSITORIES:
      found.append(name)
  return found


def test_the_link_check_catches_a_repository_that_does_not_exist():
  readme_before = ('pip install "extrap_optax @ git+https://github.com/extrap-optax/'
                   'extrap_optax"\n[![Open In Colab](https://colab.research.google.com/'
                   'github/extrap-optax/extrap_optax/blob/main/notebooks/a.ipynb)]')
  assert unknown_repository_links(readme_before) == [
      "extrap-optax/extrap_optax", "extrap-optax/extrap_optax"]
  assert unknown_repository_links(
      "[optax](https://github.com/google-deepmind/optax) and "
      "https://raw.githubusercontent.com/pytorch/examples/main/x.txt") == []


def test_no_link_to_a_repository_that_is_not_a_known_real_one():
  offenders = []
  for path in _tracked_text_files():
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      for name in unknown_repository_links(line):
        offenders.append(f"{path.relative_to(REPO)}:{number}: {name}")
  assert not offenders, (
      "links to GitHub repositories that are not known real upstream projects "
      "(this project has no public repository; add a real one to "
      "KNOWN_REPOSITORIES):\n" + "\n".join(offenders))


def test_license_is_the_apache_license_that_pyproject_declares():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  assert project["license"] == "Apache-2.0"
  assert project["license-files"] == ["LICENSE"]
  text = (REPO / "LICENSE").read_text()
  assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
  assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
  assert "END OF TERMS AND CONDITIONS" in text
  assert len(re.findall(r"^\s+\d\. ", text, re.M)) == 9  # sections 1-9 (10+ n/a)


def _summary_block(path: pathlib.Path) -> str:
  text = path.read_text()
  return text.split(summary.BEGIN)[1].split(summary.END)[0].strip()


@pytest.mark.parametrize("readme", sorted(summary.READMES), ids=lambda p: p.name
                         if p.parent == REPO else f"{p.parent.name}/{p.name}")
def test_benchmark_summary_is_generated_from_the_newest_results(readme):
  assert _summary_block(readme) == summary.summary(summary.READMES[readme]), (
      f"{readme.relative_to(REPO)}'s benchmark summary is stale: run "
      "`python -m benchmarks.summary --write`")


def _newest_by_name(results_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Benchmark -> newest `<date>-<tag>-<benchmark>.json`, by the date in the name."""
  newest = {}
  for path in results_dir.glob("*.json"):
    match = re.match(r"(\d{4}-\d\d-\d\d)-cpu-2core-(\w+)\.json$", path.name)
    if match:
      date, benchmark = match.groups()
      if benchmark not in newest or date > newest[benchmark][0]:
        newest[benchmark] = (date, path)
  return {benchmark: path for benchmark, (_, path) in newest.items()}


def test_every_readme_figure_is_in_the_newest_result_it_summarises():
  newest = _newest_by_name(REPO / "benchmarks" / "results")
  assert newest["throughput"].name == "2026-12-01-cpu-2core-throughput.json"
  block = _summary_block(REPO / "README.md")
  items = [line for line in block.splitlines() if line.startswith("- [")]
  assert len(items) == 4
  for item in items:
    linked = re.match(r"- \[[^\]]+\]\(benchmarks/results/([^)]+)\.md\)", item)[1]
    benchmark = linked.split("-cpu-2core-")[1]
    assert newest[benchmark].stem == linked, (
        f"the README summarises {linked}, not the newest {newest[benchmark].name}")
    rows = json.loads(newest[benchmark].read_text())["results"]
    measured = {f"{r[key]:.2f}" for r in rows
                for key in ("ratio", "ratio_q25", "ratio_q75")}
    for figure in re.findall(r"(\d+\.\d\d)×? \(IQR (\d+\.\d\d)-(\d+\.\d\d)", item):
      assert set(figure) <= measured, (
          f"README quotes {figure} for {benchmark}; {newest[benchmark].name} "
          "has no such ratio")
  # The figure the issue found stale: the LSTM against PyTorch.
  lstm = next(r for r in json.loads(newest["throughput"].read_text())["results"]
              if r["case"] == "LSTM LM: JAX")
  assert f"LSTM language model runs at {lstm['ratio']:.2f}×" in block


def test_a_newer_result_changes_the_summary(tmp_path):
  results = REPO / "benchmarks" / "results"
  for path in results.glob("*.json"):
    (tmp_path / path.name).write_text(path.read_text())
  data = json.loads((results / "2026-12-01-cpu-2core-throughput.json").read_text())
  for row in data["results"]:
    if row["case"] == "LSTM LM: JAX":
      row.update(ratio=1.5, ratio_q25=1.4, ratio_q75=1.6, resolved=True)
  (tmp_path / "2027-01-01-cpu-2core-throughput.json").write_text(json.dumps(data))
  text = summary.summary("benchmarks/results/", tmp_path)
  assert "2027-01-01-cpu-2core-throughput.md" in text
  assert "LSTM language model runs at 1.50× (IQR 1.40-1.60)" in text
  assert text != summary.summary("benchmarks/results/")
