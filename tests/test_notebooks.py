"""The tutorial notebooks: committed without outputs, and each runs top to bottom.

Every notebook in `notebooks/` is executed with nbclient at its small "ci" size:
the parameter cell (tagged "parameters", papermill style) reads
`EXTRAP_OPTAX_NOTEBOOK_SIZE`, and the test also injects `SIZE = "ci"` right after
it, as papermill would. Any cell error fails the test.

Data: the notebooks use `$EXTRAP_OPTAX_DATA_DIR` when it is set (CI sets it) and
fall back to synthetic data with a printed note otherwise. Set
`EXTRAP_OPTAX_NOTEBOOK_DATA=synthetic` to force the fallback while the variable
is set. `EXTRAP_OPTAX_NOTEBOOK_SIZE=default` runs them at their default size
instead (minutes each).

The kernel is the interpreter running the tests (a kernel spec written to a
temporary `JUPYTER_PATH` entry), so the notebooks see the same installed
packages, and it inherits the environment, including the 8 fake CPU devices of
`conftest.py`. It runs in a temporary directory, outside the checkout, so the
checkout is put on its `PYTHONPATH` for the `experiments` package, which is
not installed (a notebook opened inside the checkout finds it by itself).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = (
    "01_quickstart.ipynb",
    "02_framework_tour.ipynb",
    "03_cifar10_resnet20.ipynb",
    "04_language_and_translation.ipynb",
)
KERNEL_NAME = "extrap_optax_test_python"
SIZE_ENV = "EXTRAP_OPTAX_NOTEBOOK_SIZE"


def _read(path: pathlib.Path):
  return nbformat.read(path, as_version=4)


def _parameter_cell_index(nb) -> int:
  indices = [i for i, cell in enumerate(nb.cells)
             if "parameters" in cell.get("metadata", {}).get("tags", [])]
  assert len(indices) == 1, "exactly one cell must be tagged 'parameters'"
  return indices[0]


def test_all_notebooks_present():
  assert tuple(p.name for p in NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean(path):
  """No outputs or execution counts; valid; Colab install cell; parameter cell."""
  nb = _read(path)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    assert cell.get("outputs") == [], f"cell {i} of {path.name} has outputs"
    assert cell.get("execution_count") is None, (
        f"cell {i} of {path.name} has an execution count")
    assert "execution" not in cell.get("metadata", {}), (
        f"cell {i} of {path.name} has execution metadata")
  code = [c.source for c in nb.cells if c.cell_type == "code"]
  assert "sys.path.insert(0, str(CHECKOUT))" in code[0], (
      "the first code cell must put the checkout on sys.path for `experiments`")
  assert 'find_spec("experiments") is None' in code[0] and "raise" in code[0], (
      "the first code cell must say how to open the notebook when `experiments` "
      "cannot be imported")
  params = nb.cells[_parameter_cell_index(nb)].source
  assert SIZE_ENV in params and "SIZE" in params
  assert nb.metadata["kernelspec"]["name"] == "python3"


def test_data_dir_reaches_kernels_in_other_directories(data_dir, tmp_path):
  # A kernel runs in its notebook's directory, not where pytest started.
  found = subprocess.run(
      [sys.executable, "-c", "import os; print(os.path.isdir(os.environ["
       "'EXTRAP_OPTAX_DATA_DIR']))"], cwd=tmp_path, capture_output=True,
      text=True, check=True).stdout.strip()
  assert found == "True", os.environ["EXTRAP_OPTAX_DATA_DIR"]


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory) -> pathlib.Path:
  """A JUPYTER_PATH entry with a kernel spec for this interpreter."""
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "Python (extrap_optax tests)",
      "language": "python",
  }))
  return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, kernel_path, monkeypatch):
  size = os.environ.get(SIZE_ENV, "ci")
  monkeypatch.setenv(SIZE_ENV, size)
  monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
      [str(kernel_path)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p]))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  # No inline-figure windows or Qt back-ends in a headless kernel.
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  synthetic = (os.environ.get("EXTRAP_OPTAX_NOTEBOOK_DATA") == "synthetic"
               or not os.environ.get("EXTRAP_OPTAX_DATA_DIR"))
  if synthetic:
    monkeypatch.delenv("EXTRAP_OPTAX_DATA_DIR", raising=False)

  nb = _read(path)
  # Papermill-style injected parameters, right after the parameter cell.
  injected = [f"SIZE = {size!r}"]
  params = nb.cells[_parameter_cell_index(nb)].source
  if "RUNS_DIR" in params:
    injected.append(f"RUNS_DIR = {str(tmp_path / 'runs')!r}")
  if "DOWNLOAD" in params:
    injected.append("DOWNLOAD = False")  # CI has no internet
  if synthetic and "DATA_SOURCE" in params:
    injected.append('DATA_SOURCE = "synthetic"')  # not tfds, even with TensorFlow
  cell = nbformat.v4.new_code_cell("\n".join(injected))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(_parameter_cell_index(nb) + 1, cell)

  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL_NAME, timeout=900,
      resources={"metadata": {"path": str(tmp_path)}})
  start = time.perf_counter()
  try:
    client.execute()
  finally:
    # Keep the executed copy for inspection.
    nbformat.write(nb, tmp_path / path.name)
  seconds = time.perf_counter() - start
  print(f"{path.name} at SIZE={size!r}: {seconds:.1f} s "
        f"({'synthetic' if synthetic else 'real'} data)")

  text = "\n".join(
      out.get("text", "") for c in nb.cells if c.cell_type == "code"
      for out in c.get("outputs", []) if out.get("output_type") == "stream")
  if synthetic:
    assert "NOTE:" in text and "SYNTHETIC" in text, (
        "without data the notebook must say that it uses synthetic data")
  images = sum("image/png" in out.get("data", {})
               for c in nb.cells if c.cell_type == "code"
               for out in c.get("outputs", []))
  assert images >= 1, "the notebook's figures did not render"
