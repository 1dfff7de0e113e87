"""Test set-up: 8 fake CPU devices, so multi-device code runs on any machine."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, shared by the xdist
# workers and the subprocesses they start (which inherit the environment):
# many tests build the same programs again (new trainers, restarted
# processes), and loading beats compiling on CPU (the study's resume test:
# 409 s -> 166 s). A loaded executable is the one that was compiled.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="extrap_optax-tests-jit-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Notebook kernels and the multi-process tests run in other directories; the
# README's commands set the data directory relative to the checkout.
if os.environ.get("EXTRAP_OPTAX_DATA_DIR"):
  os.environ["EXTRAP_OPTAX_DATA_DIR"] = os.path.abspath(
      os.environ["EXTRAP_OPTAX_DATA_DIR"])

import pathlib

import pytest


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real data directory, or a skip with the reason when it is not set."""
  value = os.environ.get("EXTRAP_OPTAX_DATA_DIR")
  if not value:
    pytest.skip("EXTRAP_OPTAX_DATA_DIR is not set: point it at the shared data "
                "directory (see README) to run the real-data tests.")
  path = pathlib.Path(value)
  if not path.is_dir():
    pytest.fail(f"EXTRAP_OPTAX_DATA_DIR={value} is not a directory.")
  return path
