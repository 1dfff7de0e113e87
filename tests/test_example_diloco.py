"""examples/shard_map_mesh.py switched to DiLoCo + EXTRAP by its optimizer line (8 CPU devices)."""

import numpy as np
import optax
import pytest

from tests.test_examples import host_leaves
from tests.test_examples import load

STEPS = 6
H = 4
DILOCO = ["--optimizer", "diloco_extrap", "--learning-rate", "0.02",
          "--sync-period", str(H)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  main = load("shard_map_mesh").main
  checkpoint_dir = str(tmp_path_factory.mktemp("diloco"))
  main(DILOCO + ["--steps", str(STEPS // 2), "--checkpoint-dir", checkpoint_dir])
  return {
      "diloco": main(DILOCO + ["--steps", str(STEPS)]),
      "resumed": main(DILOCO + ["--steps", str(STEPS),
                                "--checkpoint-dir", checkpoint_dir]),
  }


def test_diloco_extrap_trains_and_evaluates_the_workers_average(runs):
  run = runs["diloco"]
  assert run["losses"][-1] < 0.8 * run["losses"][0], run["losses"]
  state = optax.tree_utils.tree_get(run["opt_state"], "ExtrapolationState")
  shared = host_leaves(state.shared_params)
  # Two steps after the round end at step 4 the workers' models differ ...
  assert any(np.ptp(y, axis=0).max() > 1e-6 for y in shared)
  # ... and the model the script evaluates is their average.
  for y, model in zip(shared, host_leaves(run["evaluation_params"])):
    np.testing.assert_allclose(model, y.mean(axis=0), rtol=1e-6, atol=1e-7)
  # The outer model θ (the round's start) is one model on every worker.
  for theta in host_leaves(state.communication_state.outer_params):
    np.testing.assert_array_equal(theta, np.broadcast_to(theta[0], theta.shape))


def test_diloco_extrap_resumes_bit_for_bit(runs):
  resumed, uninterrupted = runs["resumed"], runs["diloco"]
  assert resumed["losses"] == uninterrupted["losses"][STEPS // 2:]
  for part in ("params", "opt_state"):
    for a, b in zip(host_leaves(resumed[part]), host_leaves(uninterrupted[part])):
      assert a.tobytes() == b.tobytes()
