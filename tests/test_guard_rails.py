"""The silent mistakes of a training script with an extrapolated optimizer, made loud.

Each test makes one mistake in the style where it happens (a `pmean` of the
gradients left in the step, per-worker state returned as replicated or
unreplicated before a checkpoint, evaluation at the worker's parameters, an
unbound or wrong axis name) and checks the error names the problem and the fix,
or that the documented fix gives the independent reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import extrap_optax

K = 8
RATE = 0.05


def _params():
  rng = np.random.default_rng(0)
  return {"w": rng.normal(size=(3, 2)).astype(np.float32),
          "b": rng.normal(size=(2,)).astype(np.float32)}


def _loss(params, batch):
  return jnp.mean(jnp.square(jnp.tanh(batch["x"] @ params["w"] + params["b"])
                             - batch["y"]))


def _batch(step, size=K * 4):
  rng = np.random.default_rng([7, step])
  return {"x": rng.normal(size=(size, 3)).astype(np.float32),
          "y": rng.normal(size=(size, 2)).astype(np.float32)}


def _per_device(batch):
  return jax.tree.map(lambda x: x.reshape(K, -1, *x.shape[1:]), batch)


def _stacked(tree):
  return jax.tree.map(lambda x: np.broadcast_to(x, (K,) + np.shape(x)), tree)


def _per_worker_state(tx):
  params = _stacked(_params())
  return params, jax.vmap(tx.init)(params)


def _step(tx, average_in_script):
  def step(params, opt_state, batch):
    grads = jax.grad(_loss)(params, batch)
    if average_in_script:
      grads = jax.lax.pmean(grads, "batch")
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step


# 1. Gradients averaged by the script.

def _shard_map_step(tx, mesh, average_in_script):
  step = _step(tx, average_in_script)

  def one_worker(params, opt_state, batch):
    params, opt_state = jax.tree.map(lambda x: x[0], (params, opt_state))
    return jax.tree.map(lambda x: x[None], step(params, opt_state, batch))

  spec = P("batch")
  return jax.jit(jax.shard_map(one_worker, mesh=mesh, in_specs=(spec, spec, spec),
                               out_specs=(spec, spec)))


def test_shard_map_rejects_gradients_averaged_by_the_script_when_traced():
  mesh = jax.make_mesh((K,), ("batch",))
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, axis_name="batch")
  sharding = NamedSharding(mesh, P("batch"))
  params, opt_state = jax.device_put(_per_worker_state(tx), sharding)
  batch = jax.device_put(_batch(0), sharding)
  with pytest.raises(ValueError, match=r"do not vary(.|\n)*'batch'(.|\n)*Remove the "
                                       r"averaging of the gradients"):
    _shard_map_step(tx, mesh, average_in_script=True)(params, opt_state, batch)
  # Without the script's pmean the same step traces and runs.
  _shard_map_step(tx, mesh, average_in_script=False)(params, opt_state, batch)
  # At a literal rate 0 (mini-batch SGD) a second average is harmless.
  tx_zero = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.0, axis_name="batch")
  _shard_map_step(tx_zero, mesh, average_in_script=True)(params, opt_state, batch)


def _pmap_run(tx, average_in_script, num_steps=3):
  step = jax.pmap(_step(tx, average_in_script), axis_name="batch")
  params = _stacked(_params())
  opt_state = jax.pmap(tx.init)(params)
  for t in range(num_steps):
    params, opt_state = step(params, opt_state, _per_device(_batch(t)))
  return jax.block_until_ready(params)


def _vmap_run(tx, average_in_script, num_steps=3):
  step = jax.jit(jax.vmap(_step(tx, average_in_script), axis_name="batch"))
  params = _stacked(_params())
  opt_state = jax.vmap(tx.init)(params)
  for t in range(num_steps):
    params, opt_state = step(params, opt_state, _per_device(_batch(t)))
  return jax.block_until_ready(params)


@pytest.mark.parametrize("run", [_pmap_run, _vmap_run], ids=["pmap", "vmap"])
def test_debug_checks_catch_gradients_averaged_by_the_script(run):
  # The rate starts at 0, so the error comes when extrapolation starts: after
  # the update of step 1, which forms the offset used at step 2.
  rate = lambda count: jnp.where(count >= 2, RATE, 0.0)
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=rate, axis_name="batch",
                               debug_checks=True)
  with pytest.raises(jax.errors.JaxRuntimeError,
                     match=r"identical on all workers at step 1 while extrapolating"):
    run(tx, average_in_script=True)
  run(tx, average_in_script=False)  # each worker's own gradient: no error


# 2. Evaluation at the worker's parameters instead of the shared point.

def test_evaluation_params_is_the_point_before_the_extrapolation():
  """README's one-worker loop: y_t = z_t + γ̂·g_{t−1}, so `params` is not the model.

  The reference is Algorithm 1's extrapolation step inverted with the
  gradient the loop itself computed; the loss at `params` differs from the
  loss at y.
  """
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, momentum=0.9)
  params = _params()
  opt_state = tx.init(params)
  for t in range(4):
    grads = jax.grad(_loss)(params, _batch(t))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  y = extrap_optax.evaluation_params(params, opt_state)
  for name in params:
    np.testing.assert_allclose(y[name], params[name] + RATE * grads[name],
                               rtol=1e-5, atol=1e-6)
  eval_batch = _batch(100)
  assert abs(float(_loss(params, eval_batch)) - float(_loss(y, eval_batch))) > 1e-5


# 3. Per-worker state returned as replicated, or unreplicated before saving.

def test_check_per_worker_rejects_state_returned_with_out_axes_none():
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, axis_name="batch")
  params = _params()
  step = jax.pmap(_step(tx, False), axis_name="batch", in_axes=(None, None, 0),
                  out_axes=None)
  params, opt_state = step(params, tx.init(params), _per_device(_batch(0)))
  params, opt_state = step(params, opt_state, _per_device(_batch(1)))
  with pytest.raises(ValueError, match=r"state\[0\]\['b'\](.|\n)*labelled replicated"
                                       r"(.|\n)*out_axes=None(.|\n)*out_axes=0"):
    extrap_optax.check_per_worker((params, opt_state), K, name="state")


def test_check_per_worker_rejects_worker_zero_only():
  workers = extrap_optax.Workers(K, backend="vmap")
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, axis_name=workers.axis_name)
  params = workers.replicate(_params())
  opt_state = workers.map(tx.init)(params)
  stacked = (params, opt_state)
  assert extrap_optax.check_per_worker(stacked, K) is stacked
  with pytest.raises(ValueError, match=r"tree\[0\]\[.b.\] has shape \(2,\)(.|\n)*K=8(.|\n)*unreplicate"):
    extrap_optax.check_per_worker(extrap_optax.Workers.unreplicate(stacked), K)


def test_shard_map_rejects_the_optax_script_with_the_optimizer_swapped():
  """Replicated (P()) parameters, as for optax: the gradients of the replicated
  parameters are summed over the devices, hence the same on all of them."""
  mesh = jax.make_mesh((K,), ("batch",))
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, axis_name="batch")
  params = _params()
  mapped = jax.shard_map(_step(tx, False), mesh=mesh,
                         in_specs=(P(), P(), P("batch")), out_specs=(P(), P()))
  with pytest.raises(ValueError, match="do not vary"):
    jax.jit(mapped)(params, tx.init(params),
                    jax.device_put(_batch(0), NamedSharding(mesh, P("batch"))))


def test_shard_map_rejects_per_worker_params_returned_replicated():
  """The documented claim: out_specs=P() for per-worker state fails when traced."""
  mesh = jax.make_mesh((K,), ("batch",))
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, axis_name="batch")
  step = _step(tx, False)

  def one_worker(params, opt_state, batch):
    params, opt_state = jax.tree.map(lambda x: x[0], (params, opt_state))
    return step(params, opt_state, batch)

  sharding = NamedSharding(mesh, P("batch"))
  mapped = jax.shard_map(one_worker, mesh=mesh, in_specs=P("batch"),
                         out_specs=(P(), P()))
  with pytest.raises(ValueError, match="out_specs"):
    jax.jit(mapped)(*jax.device_put(_per_worker_state(tx), sharding),
                    jax.device_put(_batch(0), sharding))


# 4. An unbound or wrong axis name, in each style.

UNBOUND = r"axis_name='workers'(.|\n)*not bound(.|\n)*spmd_axis_name"


def _tx():
  return extrap_optax.extrap_sgd(0.1, extrapolation_rate=RATE, axis_name="workers")


def test_wrong_axis_name_under_pmap():
  tx = _tx()
  params = _stacked(_params())
  with pytest.raises(ValueError, match=UNBOUND):
    jax.pmap(_step(tx, False), axis_name="batch")(
        params, jax.pmap(tx.init)(params), _per_device(_batch(0)))


def test_wrong_axis_name_under_shard_map():
  mesh = jax.make_mesh((K,), ("batch",))
  tx = _tx()
  sharding = NamedSharding(mesh, P("batch"))
  with pytest.raises(ValueError, match=UNBOUND):
    _shard_map_step(tx, mesh, False)(*jax.device_put(_per_worker_state(tx), sharding),
                                     jax.device_put(_batch(0), sharding))


def test_unbound_axis_name_under_plain_jit():
  """The jit style without the per-worker vmap: the error says to add it."""
  tx = _tx()
  params = _params()
  with pytest.raises(ValueError, match=UNBOUND):
    jax.jit(_step(tx, False))(params, tx.init(params), _batch(0))


def test_wrong_axis_name_under_nnx_vmap():
  tx = _tx()

  @nnx.vmap(axis_size=K)
  def create():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  model, optimizer = create()

  @nnx.vmap(axis_name="batch")
  def step(model, optimizer, batch):
    grads = nnx.grad(lambda m: jnp.mean(jnp.square(m(batch["x"]) - batch["y"])))(model)
    optimizer.update(model, grads)

  with pytest.raises(ValueError, match=UNBOUND):
    step(model, optimizer, _per_device(_batch(0)))
