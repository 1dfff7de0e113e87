"""extrap_optax.Workers: vmap, shard_map and pmap run the same K workers alike."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from tests import contract

BACKENDS = ("vmap", "shard_map", "pmap")
NUM_STEPS = 4
LOCAL_BATCH = 2


def _mlp_loss(params, batch):
  hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - batch["y"]))


def _init_params():
  rng = np.random.default_rng(0)
  return {"w1": rng.normal(size=(6, 8)).astype(np.float32),
          "b1": np.zeros(8, np.float32),
          "w2": rng.normal(size=(8, 2)).astype(np.float32),
          "b2": np.zeros(2, np.float32)}


def _global_batches(num_workers):
  rng = np.random.default_rng(1)
  n = num_workers * LOCAL_BATCH
  return [{"x": rng.normal(size=(n, 6)).astype(np.float32),
           "y": rng.normal(size=(n, 2)).astype(np.float32)} for _ in range(NUM_STEPS)]


TRANSFORMS = {
    "extrap_sgd": lambda k, axis: extrap_optax.extrap_sgd(
        0.1, extrapolation_rate=0.1 / k, weight_decay=1e-3, axis_name=axis),
    "noise_uniform": lambda k, axis: extrap_optax.noise_extrap_sgd(
        0.1, extrapolation_rate=0.5 / k, noise="uniform", seed=5, axis_name=axis),
}


def _train(backend, num_workers, transform):
  """Returns the stacked params and evaluation params after each step."""
  workers = extrap_optax.Workers(num_workers, backend=backend)
  tx = TRANSFORMS[transform](num_workers, workers.axis_name)

  def train_step(params, opt_state, batch):
    grads = jax.grad(_mlp_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  step = workers.map(train_step)
  params = workers.replicate(_init_params())
  opt_state = workers.map(tx.init)(params)
  trajectory = []
  for batch in _global_batches(num_workers):
    params, opt_state = step(params, opt_state, workers.split(batch))
    shared = extrap_optax.evaluation_params(params, opt_state)
    for name, leaf in shared.items():  # the shared point is the same on every worker
      for k in range(1, num_workers):
        np.testing.assert_array_equal(leaf[k], leaf[0], err_msg=f"{backend} {name} {k}")
    np.testing.assert_array_equal(
        workers.evaluation_params(params, opt_state)["w1"], shared["w1"][0])
    trajectory.append(jax.tree.map(np.asarray, (params, shared)))
  return trajectory


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize("num_workers", [8, 16], ids=["K8", "K16"])
def test_backends_give_the_same_trajectory(num_workers, transform):
  expected = _train("vmap", num_workers, transform)
  # The workers really are at different points (the comparison is not vacuous).
  params, shared = expected[-1]
  assert np.max(np.abs(params["w1"][0] - params["w1"][1])) > 1e-4
  assert np.max(np.abs(params["w1"][0] - shared["w1"][0])) > 1e-4
  for backend in BACKENDS[1:]:
    for t, (got, want) in enumerate(zip(_train(backend, num_workers, transform), expected)):
      contract.assert_trees_close(got, want, err_msg=f"{backend} step {t}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_workers", [8, 16], ids=["K8", "K16"])
def test_worker_index_is_the_stacked_order(backend, num_workers):
  workers = extrap_optax.Workers(num_workers, backend=backend)
  stacked_position = workers.put(np.arange(num_workers, dtype=np.int32))
  index = workers.map(
      lambda position: (extrap_optax.worker_index(workers.axis_name), position)
  )(stacked_position)
  np.testing.assert_array_equal(index[0], np.arange(num_workers))
  np.testing.assert_array_equal(index[1], np.arange(num_workers))


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_rejects_a_batch_that_the_workers_do_not_divide(backend):
  workers = extrap_optax.Workers(8, backend=backend)
  with pytest.raises(ValueError, match=r"`batch`(.|\n)*12(.|\n)*K=8"):
    workers.split({"x": np.zeros((12, 3), np.float32)})


def test_split_keeps_the_sample_order():
  workers = extrap_optax.Workers(4, backend="vmap")
  batch = np.arange(8 * 3).reshape(8, 3)
  np.testing.assert_array_equal(workers.split(batch), batch.reshape(4, 2, 3))


def test_over_stacked_workers_on_explicit_axes_equals_workers_map():
  """The global view (explicit mesh, stacked trees) trains like `Workers.map`.

  Three EXTRAP-SGD steps of 8 workers, each on its own batch: through
  `over_stacked_workers` under `jax.set_mesh` of `jax.make_mesh`'s default
  explicit axes, and through `Workers` (shard_map over its own mesh), an
  independent path to the same collectives.
  """
  k = 8
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(3, k, 5, 4)).astype(np.float32)
  params0 = {"w": rng.normal(size=(4, 2)).astype(np.float32),
             "b": np.zeros(2, np.float32)}

  def loss(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

  def build(axis_name):
    return extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.05, weight_decay=1e-2,
                                   axis_name=axis_name)

  workers = extrap_optax.Workers(num_workers=k)
  tx = build(workers.axis_name)

  def train_step(p, s, x):
    updates, s = tx.update(jax.grad(loss)(p, x), s, p)
    return optax.apply_updates(p, updates), s

  params = workers.replicate(params0)
  state = workers.map(tx.init)(params)
  step = workers.map(train_step)
  for t in range(3):
    params, state = step(params, state, workers.put(inputs[t]))
  expected = jax.device_get((params, extrap_optax.evaluation_params(params, state)))

  stacked = extrap_optax.over_stacked_workers(build("workers"), axis_name="workers")
  mesh = jax.make_mesh((k,), ("batch",))
  with jax.set_mesh(mesh):
    params = jax.device_put(
        jax.tree.map(lambda x: np.broadcast_to(x, (k,) + x.shape), params0),
        jax.P("batch"))
    state = jax.jit(stacked.init)(params)

    @jax.jit
    def global_step(p, s, x):
      updates, s = stacked.update(jax.vmap(jax.grad(loss))(p, x), s, p)
      return optax.apply_updates(p, updates), s

    for t in range(3):
      params, state = global_step(params, state, jax.device_put(inputs[t], jax.P("batch")))
    for leaf in jax.tree.leaves((params, state)):
      assert leaf.sharding.spec[0] == "batch", leaf.sharding
    actual = jax.device_get((params, extrap_optax.evaluation_params(params, state)))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_over_stacked_workers_needs_the_axis_name_string():
  with pytest.raises(ValueError, match="`axis_name` must be the string"):
    extrap_optax.over_stacked_workers(extrap_optax.minibatch_sgd(0.1), axis_name=None)
