"""The training scripts of examples/, each run as `main(argv)` on 8 CPU devices.

For every style (pmap replicated, pmap with out_axes=None, shard_map over a
user mesh, jit with NamedSharding, Flax NNX): at extrapolation rate 0 the
script trains like the same script with `optax.sgd` (the independent
reference), with extrapolation it trains and its workers hold different
points around one shared point, and a run stopped, checkpointed with orbax and
resumed continues bit for bit.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import optax
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
STYLES = ("pmap_replicated", "pmap_out_axes_none", "shard_map_mesh",
          "jit_sharding", "flax_nnx", "global_view")
STEPS = 6


def load(style):
  spec = importlib.util.spec_from_file_location(f"example_{style}",
                                                EXAMPLES / f"{style}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def host_leaves(tree):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module", params=STYLES)
def runs(request, tmp_path_factory):
  """The five runs of one example that the tests below compare."""
  main = load(request.param).main
  checkpoint_dir = str(tmp_path_factory.mktemp(request.param))
  steps = ["--steps", str(STEPS)]
  extrap = ["--optimizer", "extrap_sgd"]
  main(extrap + ["--steps", str(STEPS // 2), "--checkpoint-dir", checkpoint_dir])
  return {
      "style": request.param,
      "optax": main(["--optimizer", "optax"] + steps),
      "rate_zero": main(extrap + ["--extrapolation-rate", "0"] + steps),
      "extrap": main(extrap + steps),
      "resumed": main(extrap + steps + ["--checkpoint-dir", checkpoint_dir]),
  }


def test_rate_zero_trains_like_the_optax_script(runs):
  # Two different XLA programs: equal up to the last bits, not bit for bit.
  got, expected = runs["rate_zero"], runs["optax"]
  np.testing.assert_allclose(got["losses"], expected["losses"], rtol=1e-5)
  for a, b in zip(host_leaves(got["evaluation_params"]),
                  host_leaves(expected["evaluation_params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extrapolation_trains_around_one_shared_point(runs):
  run = runs["extrap"]
  losses = run["losses"]
  assert losses[-1] < 0.7 * losses[0], losses
  assert not np.allclose(losses, runs["rate_zero"]["losses"], rtol=1e-4)
  state = optax.tree_utils.tree_get(run["opt_state"], "ExtrapolationState")
  for y, z in zip(host_leaves(state.shared_params), host_leaves(run["params"])):
    assert y.shape[0] == z.shape[0] == jax.device_count()
    np.testing.assert_array_equal(y, np.broadcast_to(y[0], y.shape))
  distances = [np.max(np.abs(z - y)) for y, z in zip(
      host_leaves(state.shared_params), host_leaves(run["params"]))]
  assert max(distances) > 1e-4
  assert any(np.max(np.abs(z[0] - z[1])) > 1e-5 for z in host_leaves(run["params"]))


def test_checkpoint_resumes_bit_for_bit(runs):
  resumed, uninterrupted = runs["resumed"], runs["extrap"]
  assert resumed["losses"] == uninterrupted["losses"][STEPS // 2:]
  for part in ("params", "opt_state"):
    got, expected = host_leaves(resumed[part]), host_leaves(uninterrupted[part])
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
      assert a.dtype == b.dtype and a.shape == b.shape
      assert a.tobytes() == b.tobytes()


def test_per_worker_state_stays_sharded_over_the_mesh(runs):
  if runs["style"] not in ("shard_map_mesh", "jit_sharding", "flax_nnx", "global_view"):
    pytest.skip("pmap places its outputs itself")
  for leaf in jax.tree.leaves((runs["extrap"]["params"], runs["extrap"]["opt_state"])):
    assert leaf.sharding.spec[0] == "batch", leaf.sharding


def test_global_view_runs_on_explicit_axes_with_one_all_reduce():
  """The global-view step: default (explicit) mesh axes, the mean an all-reduce."""
  module = load("global_view")
  mesh = jax.make_mesh((jax.device_count(),), ("batch",))
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  args = module.argparse.Namespace(optimizer="extrap_sgd", learning_rate=0.2,
                                   extrapolation_rate=None)
  tx = module.make_optimizer(args, jax.device_count())
  with jax.set_mesh(mesh):
    params = jax.device_put(jax.tree.map(
        lambda x: np.broadcast_to(x, (jax.device_count(),) + x.shape),
        module.init_params(jax.random.key(0))), jax.P("batch"))
    state = jax.jit(tx.init)(params)
    grads = jax.tree.map(lambda x: x * 0.5, params)

    def update(grads, state, params):
      return tx.update(grads, state, params)

    hlo = jax.jit(update).lower(grads, state, params).compile().as_text()
    updates, new_state = jax.jit(update)(grads, state, params)
  # One all-reduce (XLA combines the leaves'), no gather of the workers' values.
  assert hlo.count("all-reduce(") >= 1 and "all-gather" not in hlo
  assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)
  for leaf in jax.tree.leaves(updates):
    assert leaf.sharding.spec[0] == "batch"
