"""Elastic restore (`resize_workers`): K workers' state continued on K' workers.

For K = 8 -> 4 and 4 -> 8: EXTRAP-SGD trains 3 steps on K workers (and
post-local SGD into its local phase, where the workers' models differ), the
state is saved and restored with orbax, mapped onto K' workers, and one more
step runs there. The expectation is computed independently in NumPy from the
rules: every new worker starts at the shared point y with the momentum buffer
and step count carried over, takes its gradient at y, and the step is the
Nesterov step with the mean of the K' gradients, followed by the new workers'
own extrapolation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import extrap_optax

LR, RATE, MOMENTUM = 0.1, 0.05, 0.9
RNG = np.random.default_rng(0)
INPUTS = RNG.normal(size=(4, 8, 5, 3)).astype(np.float32)   # step, worker, batch
TARGETS = RNG.normal(size=(4, 8, 5)).astype(np.float32)
W0 = RNG.normal(size=3).astype(np.float32)


def loss(w, x, t):
  return 0.5 * jnp.mean((x @ w - t) ** 2)


def grad_np(w, x, t):
  w, x, t = (np.asarray(a, np.float64) for a in (w, x, t))
  return x.T @ (x @ w - t) / len(t)


def train(tx, workers, params, state, steps):
  def step(p, s, x, t):
    updates, s = tx.update(jax.grad(loss)(p, x, t), s, p)
    return optax.apply_updates(p, updates), s

  step = workers.map(step)
  k = workers.num_workers
  for t in steps:
    params, state = step(params, state, workers.put(INPUTS[t, :k]),
                         workers.put(TARGETS[t, :k]))
  return params, state


def checkpoint_round_trip(tree, directory):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "checkpoint", tree)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(
        directory / "checkpoint", jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))


@pytest.mark.parametrize(("old", "new"), [(8, 4), (4, 8)])
def test_extrap_sgd_resumes_on_a_different_number_of_workers(old, new, tmp_path):
  def build(workers):
    return extrap_optax.extrap_sgd(LR, extrapolation_rate=RATE, momentum=MOMENTUM,
                                   axis_name=workers.axis_name)

  before = extrap_optax.Workers(num_workers=old)
  tx = build(before)
  params = before.replicate(W0)
  state = before.map(tx.init)(params)
  params, state = train(tx, before, params, state, range(3))
  restored = checkpoint_round_trip({"params": params, "opt_state": state}, tmp_path)

  old_state = optax.tree_utils.tree_get(jax.device_get(state), "ExtrapolationState")
  y = np.asarray(old_state.shared_params[0], np.float64)
  momentum = np.asarray(jax.tree.leaves(old_state.base_state)[0][0], np.float64)
  assert np.all(np.asarray(old_state.shared_params) == old_state.shared_params[0])
  assert not np.allclose(jax.device_get(params), y), "the workers held offsets"

  new_params, new_state = extrap_optax.resize_workers(
      restored["params"], restored["opt_state"], new)
  assert np.shape(new_params) == (new, 3)
  np.testing.assert_array_equal(new_params, np.broadcast_to(old_state.shared_params[0], (new, 3)))
  carried = optax.tree_utils.tree_get(new_state, "ExtrapolationState")
  np.testing.assert_array_equal(carried.count, np.full(new, 3))
  extrap_optax.check_per_worker((new_params, new_state), new)

  after = extrap_optax.Workers(num_workers=new)
  tx = build(after)
  params, state = train(tx, after, after.put(new_params), after.put(new_state), [3])

  # NumPy: gradients at y on the new workers, Nesterov with the carried buffer.
  grads = np.stack([grad_np(y, INPUTS[3, k], TARGETS[3, k]) for k in range(new)])
  mean = grads.mean(0)
  buffer = MOMENTUM * momentum + mean
  y_next = y - LR * (mean + MOMENTUM * buffer)
  np.testing.assert_allclose(after.evaluation_params(params, state), y_next,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params, y_next - RATE * grads, rtol=1e-5, atol=1e-6)


def test_local_models_of_post_local_sgd_are_averaged():
  old, new = 8, 4
  before = extrap_optax.Workers(num_workers=old)
  tx = extrap_optax.post_local_sgd(LR, start_step=1, sync_period=4,
                                   axis_name=before.axis_name)
  params = before.replicate(W0)
  state = before.map(tx.init)(params)
  params, state = train(tx, before, params, state, range(3))   # 2 local steps
  local = np.asarray(optax.tree_utils.tree_get(
      jax.device_get(state), "ExtrapolationState").shared_params)
  assert not np.allclose(local, local[0]), "the local models differ"
  new_params, new_state = extrap_optax.resize_workers(params, state, new)
  expected = local.astype(np.float64).mean(0).astype(np.float32)
  np.testing.assert_array_equal(new_params, np.broadcast_to(expected, (new, 3)))
  shared = optax.tree_utils.tree_get(new_state, "ExtrapolationState").shared_params
  np.testing.assert_array_equal(shared, new_params)


def test_resize_workers_rejects_trees_without_the_worker_axis():
  workers = extrap_optax.Workers(num_workers=4, backend="vmap")
  tx = extrap_optax.extrap_sgd(LR, extrapolation_rate=RATE, axis_name=workers.axis_name)
  params = workers.replicate(W0)
  state = workers.map(tx.init)(params)
  with pytest.raises(ValueError, match="without a leading worker axis"):
    extrap_optax.resize_workers(params, workers.unreplicate(state), 2)
  with pytest.raises(ValueError, match="`num_workers` must be a positive int"):
    extrap_optax.resize_workers(params, state, 0)
