"""Post-local SGD (Algorithm 2) under jax.shard_map with 8 workers, one per device."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from tests import contract
from tests.extrapolation_problems import GAMMA_HAT
from tests.extrapolation_problems import trust_ratio_loss
from tests.extrapolation_problems import trust_ratio_problem
from tests.extrapolation_problems import TRUST_WEIGHT_DECAY

K = 8
LR = 0.05


@pytest.fixture(scope="module")
def workers():
  return extrap_optax.Workers(K, backend="shard_map")


def problem(workers, seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": np.zeros(3, np.float32)}
  k = workers.num_workers
  inputs = rng.standard_normal((k, 16, 4)).astype(np.float32)
  targets = rng.standard_normal((k, 16, 3)).astype(np.float32)
  return params, workers.put(inputs), workers.put(targets)


def loss(params, inputs, targets):
  return jnp.mean((jnp.tanh(inputs @ params["w"] + params["b"]) - targets) ** 2)


def trajectory(workers, tx, steps, seed=0):
  """Per-step (params, shared point, state) of every worker."""
  params, inputs, targets = problem(workers, seed)

  def step(params, state, inputs, targets):
    grads = jax.grad(loss)(params, inputs, targets)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = workers.replicate(params)
  state = workers.map(tx.init)(params)
  run = workers.map(step)
  history = []
  for _ in range(steps):
    params, state = run(params, state, inputs, targets)
    history.append(jax.device_get(
        (params, extrap_optax.evaluation_params(params, state), state)))
  return history


def _compare_shared_points(ours, reference, check, **tolerances):
  """`check` each step's shared point of `ours` against `reference`'s params."""
  for (_, shared, _), (params, _, _) in zip(ours, reference):
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(params)):
      check(a, b, **tolerances)


def post_local(workers, **kwargs):
  return extrap_optax.post_local_sgd(
      LR, weight_decay=1e-3, axis_name=workers.axis_name, **kwargs)


def test_before_start_step_equals_minibatch_sgd(workers):
  # Same operations; jit may fuse the two programs differently in the last bit.
  ours = trajectory(workers, post_local(workers, start_step=4, sync_period=2), 4)
  reference = trajectory(workers, extrap_optax.minibatch_sgd(
      LR, weight_decay=1e-3, axis_name=workers.axis_name), 4)
  _compare_shared_points(ours, reference, contract.assert_trees_close)


def test_before_start_step_equals_minibatch_sgd_bit_for_bit_op_by_op():
  vmap_workers = extrap_optax.Workers(4, backend="vmap")
  with jax.disable_jit():
    ours = trajectory(vmap_workers, post_local(vmap_workers, start_step=3, sync_period=2), 3)
    reference = trajectory(vmap_workers, extrap_optax.minibatch_sgd(
        LR, weight_decay=1e-3, axis_name=vmap_workers.axis_name), 3)
  _compare_shared_points(ours, reference, np.testing.assert_array_equal)


def test_sync_period_one_equals_synchronous_training(workers):
  ours = trajectory(workers, post_local(workers, start_step=0, sync_period=1), 10)
  reference = trajectory(workers, extrap_optax.minibatch_sgd(
      LR, weight_decay=1e-3, axis_name=workers.axis_name), 10)
  _compare_shared_points(ours, reference, contract.assert_trees_close, rtol=2e-5)


def test_local_steps_average_every_h_and_never_average_momentum(workers):
  start, period = 2, 3
  history = trajectory(workers, post_local(workers, start_step=start, sync_period=period), 9)

  def spread(tree):
    return max(float(np.ptp(leaf, axis=0).max()) for leaf in jax.tree.leaves(tree))

  for t, (_, shared, state) in enumerate(history):
    averaged = t >= start and (t - start + 1) % period == 0
    if t < start or averaged:
      assert spread(shared) == 0.0, f"step {t}: models should be equal"
    else:
      assert spread(shared) > 0.0, f"step {t}: local models should differ"
    momentum = optax.tree_utils.tree_get(state, "TraceState").trace
    if t >= start:
      assert spread(momentum) > 0.0, f"step {t}: momentum buffers must stay local"


def test_extrapolation_continues_from_the_local_models(workers):
  rate = 0.01
  params0, inputs, targets = problem(workers)
  tx = post_local(workers, start_step=1, sync_period=4, extrapolation_rate=rate)
  history = trajectory(workers, tx, 3)
  params, shared, _ = history[1]  # after the first local step (t = 1)
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  previous_params = jax.tree.map(lambda x: np.asarray(x), history[0][0])
  for k in range(K):
    worker_params = jax.tree.map(lambda x: x[k], previous_params)
    local_grad = jax.grad(loss)(worker_params, inputs[k], targets[k])
    offset = jax.tree.map(lambda p, y: p[k] - y[k], params, shared)
    for a, g in zip(jax.tree.leaves(offset), jax.tree.leaves(local_grad)):
      np.testing.assert_allclose(a, -rate * np.asarray(g), rtol=1e-4, atol=1e-7)


def _collectives(jaxpr) -> int:
  count = 0
  for eqn in jaxpr.eqns:
    if "psum" in eqn.primitive.name or "all_reduce" in eqn.primitive.name:
      count += 1
    if eqn.primitive.name == "cond":
      continue
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _collectives(sub)
  return count


def _branch_collectives(jaxpr, found):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "cond":
      found.append([_collectives(branch.jaxpr) for branch in eqn.params["branches"]])
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      _branch_collectives(sub, found)
  return found


def test_local_steps_contain_no_collective(workers):
  tx = post_local(workers, start_step=2, sync_period=4, extrapolation_rate=0.01)
  params, inputs, targets = problem(workers)

  def step(params, state, inputs, targets):
    grads = jax.grad(loss)(params, inputs, targets)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = workers.replicate(params)
  state = workers.map(tx.init)(params)
  jaxpr = jax.make_jaxpr(workers.map(step))(params, state, inputs, targets).jaxpr
  # Outside the phase conditionals a step communicates nothing ...
  assert _collectives(jaxpr) == 0
  # ... and each conditional has exactly one branch without a collective: the
  # local gradient step, and the step that does not average parameters.
  branches = _branch_collectives(jaxpr, [])
  assert len(branches) == 2, branches
  for counts in branches:
    assert sorted(counts)[0] == 0 and sorted(counts)[1] >= 1, counts


@pytest.mark.parametrize("kwargs, name", [
    (dict(start_step=-1, sync_period=2), "start_step"),
    (dict(start_step=0, sync_period=0), "sync_period"),
    (dict(start_step=0, sync_period=2.5), "sync_period"),
])
def test_bad_arguments_are_named(kwargs, name):
  with pytest.raises(ValueError, match=name):
    extrap_optax.post_local_sgd(0.1, **kwargs)


def test_post_local_trust_ratio_needs_the_default_perturbation():
  with pytest.raises(ValueError, match="`extrapolation_scaling`.*`perturbation`"):
    extrap_optax.post_local_sgd(
        0.1, start_step=1, sync_period=2, extrapolation_rate=0.01,
        perturbation=extrap_optax.gradient_noise(), extrapolation_scaling="trust_ratio")


def test_post_local_sgd_before_t0_is_trust_ratio_extrap_sgd():
  x0, c, d = trust_ratio_problem()
  hp = dict(extrapolation_rate=GAMMA_HAT, weight_decay=TRUST_WEIGHT_DECAY,
            trust_coefficient=0.02, extrapolation_scaling="trust_ratio")
  data = jax.tree.map(lambda x: jnp.asarray(x[0], jnp.float32), (c, d))
  results = []
  for tx in (extrap_optax.extrap_sgd(0.1, **hp),
             extrap_optax.post_local_sgd(0.1, start_step=10, sync_period=2, **hp)):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), x0)
    state = tx.init(params)
    for _ in range(3):
      grads = jax.grad(trust_ratio_loss)(params, *data)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    results.append(params)
  for name in x0:
    contract.assert_trees_close(results[1][name], results[0][name], err_msg=name)
