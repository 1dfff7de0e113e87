"""The distribution: what it ships, what it depends on, and that it works alone.

The wheel holds the library `extrap_optax` and nothing else (as optax ships only
`optax`); `experiments/` and `benchmarks/` run from a checkout. Its dependencies
are exactly the third-party packages the library imports, and the imports of
the checkout's packages are declared in the extras. The slow test builds the
sdist and the wheel with `python -m build`, installs the wheel into a fresh
virtual environment with its declared dependencies only, and trains one step
with one worker and with K workers there, against NumPy.
"""

import ast
import email.parser
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import textwrap
import time
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
OWN_PACKAGES = {"extrap_optax", "experiments", "benchmarks", "tests"}


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements) -> set[str]:
  """Distribution names of requirements, without extras of this project."""
  names = {_canonical(Requirement(r).name) for r in requirements}
  return names - {_canonical(PROJECT["name"])}


def _imported_modules(root: pathlib.Path) -> set[str]:
  """Top-level modules imported anywhere (also inside functions) under root."""
  modules = set()
  for path in root.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        modules.update(alias.name.partition(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        modules.add(node.module.partition(".")[0])
  return modules


def _third_party_distributions(root: pathlib.Path) -> set[str]:
  """The distributions providing the non-stdlib, non-project imports under root."""
  providers = importlib.metadata.packages_distributions()
  names = set()
  for module in _imported_modules(root) - set(sys.stdlib_module_names) - OWN_PACKAGES:
    assert module in providers, (
        f"{root.name}/ imports {module!r}, which no installed distribution provides")
    names.update(_canonical(d) for d in providers[module])
  return names


def test_dependencies_are_exactly_what_the_library_imports():
  imported = _third_party_distributions(REPO / "extrap_optax")
  assert imported == {"jax", "optax", "numpy"}
  assert _declared(PROJECT["dependencies"]) == imported


# Needed at run time by a dependency that does not declare it:
# tensorflow_datasets/core/dataset_builder.py imports it lazily (a fresh
# install without it fails every tfds builder).
UNDECLARED_BY_DEPENDENCIES = {"importlib-resources"}


def test_experiments_extra_is_exactly_what_the_experiments_import():
  extras = PROJECT["optional-dependencies"]
  imported = _third_party_distributions(REPO / "experiments")
  core = _declared(PROJECT["dependencies"])
  assert (_declared(extras["experiments"])
          == (imported - core) | UNDECLARED_BY_DEPENDENCIES)


def test_benchmarks_imports_are_declared():
  extras = PROJECT["optional-dependencies"]
  declared = _declared(PROJECT["dependencies"])
  for extra in ("experiments", "test"):  # torch, for the PyTorch comparison
    declared |= _declared(extras[extra])
  assert _third_party_distributions(REPO / "benchmarks") <= declared


def test_examples_imports_are_in_the_experiments_extra():
  extras = PROJECT["optional-dependencies"]
  declared = _declared(PROJECT["dependencies"]) | _declared(extras["experiments"])
  assert _third_party_distributions(REPO / "examples") <= declared


def test_only_the_library_is_packaged():
  find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
  assert find["include"] == ["extrap_optax", "extrap_optax.*"]
  assert "package-data" not in PYPROJECT["tool"]["setuptools"]


# Run in the fresh environment, from a directory outside the checkout.
SMOKE_SCRIPT = textwrap.dedent('''
    import importlib.util, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax
    import extrap_optax

    assert extrap_optax.__file__.startswith(sys.prefix), extrap_optax.__file__
    for name in ("experiments", "benchmarks"):
      assert importlib.util.find_spec(name) is None, f"{name} is installed"

    lr, rate, u, K = 0.1, 0.05, 0.9, 4
    rng = np.random.default_rng(0)
    X = rng.normal(size=(K, 8, 3)).astype(np.float32)
    t = rng.normal(size=(K, 8)).astype(np.float32)
    w0 = rng.normal(size=3).astype(np.float32)

    def loss(w, batch):
      x, y = batch
      return 0.5 * jnp.mean((x @ w - y) ** 2)

    def grad_np(w, k):  # the gradient of worker k's loss, in NumPy
      return X[k].T @ (X[k] @ w - t[k]) / len(t[k])

    # One worker (batch of worker 0): two steps of EXTRAP-SGD.
    tx = extrap_optax.extrap_sgd(lr, extrapolation_rate=rate, momentum=u)
    params, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    for _ in range(2):
      grads = jax.grad(loss)(params, (X[0], t[0]))
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    g0 = grad_np(w0, 0)
    y1 = w0 - lr * (1 + u) * g0
    g1 = grad_np(y1 - rate * g0, 0)  # taken at the extrapolated point z
    y2 = y1 - lr * (g1 + u * (u * g0 + g1))
    np.testing.assert_allclose(extrap_optax.evaluation_params(params, state), y2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params, y2 - rate * g1, rtol=1e-5, atol=1e-6)

    # K workers, one per fake CPU device: one step.
    workers = extrap_optax.Workers(num_workers=K)
    assert workers.num_devices == K, workers
    tx = extrap_optax.extrap_sgd(lr, extrapolation_rate=rate, momentum=u,
                                 axis_name=workers.axis_name)

    def train_step(params, opt_state, batch):
      grads = jax.grad(loss)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    params = workers.replicate(jnp.asarray(w0))
    state = workers.map(tx.init)(params)
    params, state = workers.map(train_step)(params, state, workers.put((X, t)))
    local = np.stack([grad_np(w0, k) for k in range(K)])
    y1 = w0 - lr * (1 + u) * local.mean(0)
    np.testing.assert_allclose(workers.evaluation_params(params, state), y1,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params, y1 - rate * local, rtol=1e-5, atol=1e-6)
    print("smoke ok")
''')


def _run(command, **kwargs):
  result = subprocess.run(command, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, (
      f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}")
  return result.stdout


@pytest.mark.slow
def test_wheel_installs_alone_and_trains_one_and_k_workers(tmp_path):
  dist = tmp_path / "dist"
  start = time.perf_counter()
  # sdist first, then the wheel built from the sdist: the sdist is complete.
  _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)])
  built = time.perf_counter()
  (sdist,) = dist.glob("*.tar.gz")
  (wheel,) = dist.glob("*.whl")

  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
  top_level = {name.split("/")[0] for name in names}
  assert top_level == {"extrap_optax", metadata_name.split("/")[0]}, top_level
  # The license of pyproject.toml, and its full text (LICENSE) in the wheel.
  assert metadata["License-Expression"] == PROJECT["license"] == "Apache-2.0"
  license_name = metadata_name.replace("METADATA", "licenses/LICENSE")
  with zipfile.ZipFile(wheel) as archive:
    assert archive.read(license_name) == (REPO / "LICENSE").read_bytes()
  assert "extrap_optax/_src/extrapolation.py" in names
  requires = [r for r in metadata.get_all("Requires-Dist")
              if "extra ==" not in r]
  assert _declared(requires) == {"jax", "optax", "numpy"}
  with tarfile.open(sdist) as archive:
    members = {"/".join(m.split("/")[1:3]) for m in archive.getnames()}
  assert "extrap_optax/_src" in members
  assert "LICENSE" in members
  assert not {m for m in members if m.startswith(("experiments", "benchmarks"))}

  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  python = venv / "bin" / "python"
  # This interpreter's pip installs into the new environment, reusing its cache.
  _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
        "--disable-pip-version-check", str(wheel)])
  installed = time.perf_counter()
  freeze = _run([sys.executable, "-m", "pip", "--python", str(python), "list",
                 "--format=freeze", "--disable-pip-version-check"])
  names = {_canonical(line.split("==")[0]) for line in freeze.split()}
  assert {"extrap-optax", "jax", "jaxlib", "optax", "numpy"} <= names
  assert not names & {"flax", "chex", "tensorflow-datasets", "torch", "pytest"}

  script = tmp_path / "smoke.py"
  script.write_text(SMOKE_SCRIPT)
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "XLA_FLAGS", "VIRTUAL_ENV")}
  env.update(JAX_PLATFORMS="cpu", PYTHONNOUSERSITE="1")
  out = _run([str(python), "-I", str(script)], cwd=tmp_path, env=env)
  assert "smoke ok" in out
  print(f"build {built - start:.1f} s, install {installed - built:.1f} s, "
        f"smoke {time.perf_counter() - installed:.1f} s")
