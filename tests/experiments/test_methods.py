"""The runner's methods (experiments/methods.py): one record each, every one builds.

References: NumPy re-implementations (float64) of the averaged-past-gradient
extrapolation and of App. C.1's LARS-scaled extrapolation rate; the layout
rules of issue 25 (every method name in one module, module sizes).
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from experiments import methods
from experiments import train
from experiments.configs import base
from experiments.configs import overrides
from experiments.configs import validation
from tests.extrapolation_problems import np_trust_ratio
from tests.extrapolation_problems import trust_ratio_loss
from tests.extrapolation_problems import trust_ratio_problem

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"
AXIS = "workers"


def _config(method, **fields):
  config = base.get_config()
  config.workers.num_workers = 2
  config.workers.local_batch_size = 4
  config.schedule.name = "constant"
  config.schedule.decay_fractions = ()
  changes = {"optimizer.method": method,
             **{f"optimizer.{k}": v for k, v in fields.items()}}
  if "local_start_epoch" in methods.get(method).fields:
    changes["optimizer.local_start_epoch"] = 1.0
  return overrides.apply(config, changes)


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_builds_and_steps_on_two_workers(name):
  config = _config(name)
  validation.validate(config)
  tx = methods.build(config, lambda count: 0.1, steps_per_epoch=2,
                     num_steps=8, axis_name=AXIS)
  params = {"w": jnp.ones((2, 3, 2)), "b": jnp.zeros((2, 2))}
  grads = {"w": jnp.stack([jnp.full((3, 2), 0.5), jnp.full((3, 2), -0.25)]),
           "b": jnp.stack([jnp.ones(2), jnp.zeros(2)])}

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  state = jax.vmap(tx.init)(params)
  for _ in range(4):   # past local_start_epoch = 1 (2 steps) for post-local
    params, state = jax.vmap(step, axis_name=AXIS)(params, state, grads)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  # The shared point moved against the mean gradient.
  y = extrap_optax.evaluation_params(params, state)
  assert float(jnp.mean(y["b"])) < 0


def test_each_method_has_only_its_own_fields():
  adam = _config(methods.ADAM.name).optimizer
  assert set(adam) == {*methods.COMMON_FIELDS, "b1", "b2", "eps"}
  assert "momentum" not in adam and "sync_period" not in adam
  with pytest.raises(ValueError, match="optimizer.momentum is not a field of "
                     "optimizer.method='adam'"):
    overrides.apply(base.get_config(), {"optimizer.method": "adam",
                                        "optimizer.momentum": 0.5})
  config = base.get_config()
  config.optimizer.sync_period = 8   # a post-local field on extrap_sgd
  with pytest.raises(validation.ConfigError,
                     match="optimizer.sync_period: not a field of "
                     "optimizer.method='extrap_sgd'"):
    validation.validate(config)


def test_switching_method_keeps_the_shared_fields():
  config = overrides.apply(base.get_config(),
                           {"optimizer.momentum": 0.5,
                            "optimizer.method": "post_local_sgd",
                            "optimizer.sync_period": 4})
  assert config.optimizer.momentum == 0.5
  assert config.optimizer.sync_period == 4
  assert "extrapolation_scale" not in config.optimizer


def test_int_for_a_float_field_becomes_a_float():
  config = overrides.apply(base.get_config(),
                           {"optimizer.base_learning_rate": 1})
  assert isinstance(config.optimizer.base_learning_rate, float)
  assert overrides.parse(["a.b=(0.5, 0.75)", "c=tfds"]) == {
      "a.b": (0.5, 0.75), "c": "tfds"}


def test_averaged_past_gradient_against_numpy():
  """z^k_{t+1} = y_{t+1} − γ̂ ḡ_t, the same point on both workers."""
  lr, scale, momentum, num_workers = 0.1, 2.0, 0.9, 2
  rate = scale * lr / num_workers
  config = _config(methods.EXTRAP_SGD_AVERAGED.name, momentum=momentum,
                   weight_decay=0.0, trust_coefficient=0.0,
                   extrapolation_scale=scale)
  tx = methods.build(config, lambda count: lr, steps_per_epoch=4,
                     num_steps=10, axis_name=AXIS)
  rng = np.random.default_rng(0)
  a = rng.normal(size=(num_workers, 5, 3))
  b = rng.normal(size=(num_workers, 5))
  x0 = rng.normal(size=3)

  def loss(x, a_k, b_k):
    return 0.5 * jnp.sum(jnp.square(a_k @ x - b_k))

  def step(x, s, a_k, b_k):
    updates, s = tx.update(jax.grad(loss)(x, a_k, b_k), s, x)
    return optax.apply_updates(x, updates), s

  params = jnp.stack([jnp.asarray(x0, jnp.float32)] * num_workers)
  state = jax.vmap(tx.init)(params)
  mapped = jax.jit(jax.vmap(step, axis_name=AXIS))
  y, buffer, z = x0.copy(), np.zeros(3), np.stack([x0] * num_workers)
  for t in range(4):
    params, state = mapped(params, state, jnp.asarray(a, jnp.float32),
                           jnp.asarray(b, jnp.float32))
    grads = np.stack([a[k].T @ (a[k] @ z[k] - b[k])
                      for k in range(num_workers)])
    mean = grads.mean(0)
    buffer = momentum * buffer + mean
    y = y - lr * (mean + momentum * buffer)   # Nesterov
    z = np.stack([y - rate * mean] * num_workers)
    np.testing.assert_allclose(
        np.asarray(extrap_optax.evaluation_params(params, state))[0], y,
        rtol=1e-5, err_msg=f"y, step {t}")
    np.testing.assert_allclose(np.asarray(params), z, rtol=1e-5, atol=1e-6,
                               err_msg=f"z, step {t}")


def _toy_trust_ratio_config(method):
  config = _config(method, extrapolation_scaling="trust_ratio",
                   extrapolation_scale=2.0)
  config.schedule.warmup_epochs = 1.0
  config.schedule.reference_batch_size = 2
  if "local_start_epoch" in config.optimizer:
    config.optimizer.local_start_epoch = 5.0  # local from t0 = 20
  return config


@pytest.mark.parametrize("method", ["extrap_sgd", "post_local_extrap_sgd"])
def test_trust_ratio_extrapolation_rate_follows_the_schedule(method):
  """γ̂_t = c·(γ̃/K)·γ_t/γ_peak on the LARS-scaled past gradient (App. C.1)."""
  config = _toy_trust_ratio_config(method)
  opt, num_workers = config.optimizer, config.workers.num_workers
  steps_per_epoch, num_steps = 4, 40
  learning_rate = train.schedules.make_schedule(config, steps_per_epoch,
                                                num_steps)
  tx = methods.build(config, learning_rate, steps_per_epoch=steps_per_epoch,
                     num_steps=num_steps, axis_name=None)
  # γ_peak = γ0·K·B/B_ref, the value the schedule reaches after its warm-up.
  peak = (opt.base_learning_rate * num_workers * config.workers.local_batch_size
          / config.schedule.reference_batch_size)
  np.testing.assert_allclose(float(learning_rate(steps_per_epoch)), peak,
                             rtol=1e-6)
  x0, c, d = trust_ratio_problem()
  data = jax.tree.map(lambda x: jnp.asarray(x[0], jnp.float32), (c, d))
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), x0)
  state = tx.init(params)
  decayed = {k: np.ndim(p) >= 2 for k, p in x0.items()}
  for t in range(3):  # inside the warm-up: γ̂ follows γ_t
    grads = jax.grad(trust_ratio_loss)(params, *data)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    shared = extrap_optax.evaluation_params(params, state)
    rate = (opt.extrapolation_scale * opt.trust_coefficient / num_workers
            * float(learning_rate(t + 1)) / peak)
    zeta = np_trust_ratio(grads, shared, opt.weight_decay, decayed)
    for name in x0:
      np.testing.assert_allclose(
          np.asarray(params[name], np.float64)
          - np.asarray(shared[name], np.float64),
          -rate * zeta[name], rtol=1e-4, atol=1e-7, err_msg=f"{name}, step {t}")


@pytest.mark.parametrize(("method", "changes", "match"), [
    ("extrap_sgd", {"optimizer.trust_coefficient": 0.0},
     r"optimizer\.extrapolation_scaling.*optimizer\.trust_coefficient.*> 0"),
    ("extrap_sgd", {"optimizer.extrapolation_scaling": "lars"},
     r"optimizer\.extrapolation_scaling='lars' is unknown; choose one of "
     r"none, trust_ratio"),
    ("noise_extrap_sgd", {}, r"optimizer\.extrapolation_scaling is not a "
     r"field of optimizer\.method='noise_extrap_sgd'"),
    ("minibatch_sgd", {}, r"optimizer\.extrapolation_scaling is not a field "
     r"of optimizer\.method='minibatch_sgd'"),
], ids=["without_lars", "unknown", "noise_extrap_sgd", "minibatch_sgd"])
def test_bad_extrapolation_scaling_is_refused(method, changes, match):
  config = _toy_trust_ratio_config("extrap_sgd")
  with pytest.raises(ValueError, match=match):
    validation.validate(overrides.apply(config, {
        "optimizer.method": method,
        "optimizer.extrapolation_scaling": "trust_ratio", **changes}))


def test_tuning_grids_are_app_c1():
  sgd = _config(methods.MINIBATCH_SGD.name)
  assert methods.tuning_grid(sgd) == {
      "optimizer.base_learning_rate": (0.05, 0.1, 0.15, 0.2),
      "optimizer.trust_coefficient": (0.01, 0.02, 0.03)}
  no_lars = _config(methods.POST_LOCAL_SGD.name, trust_coefficient=0.0)
  assert methods.tuning_grid(no_lars) == {
      "optimizer.base_learning_rate": (0.05, 0.1, 0.15, 0.2),
      "optimizer.sync_period": (4, 8, 16)}
  assert methods.tuning_grid(_config(methods.EXTRAP_ADAM.name)) == {
      "optimizer.extrapolation_scale": (1.0, 2.0, 4.0)}
  assert methods.tuning_grid(_config(methods.ADAM.name)) == {}


def test_evaluation_point_averages_workers_of_local_methods_only():
  # Two workers one step into a local round: their y^k differ; the trainer
  # evaluates their average for post-local SGD and the shared point (the
  # same on both) for mini-batch SGD, as the library's state says.
  workers = extrap_optax.Workers(2, backend="vmap")
  model_state = {"mean": jnp.array([1.0, 3.0])}
  grads = workers.put({"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])})
  for method, expected in ((methods.POST_LOCAL_SGD, [-1.0, -2.0]),
                           (methods.MINIBATCH_SGD, [-1.0, -2.0])):
    tx = (extrap_optax.post_local_sgd(0.5, start_step=0, sync_period=4,
                                      momentum=0.0, axis_name=workers.axis_name)
          if method is methods.POST_LOCAL_SGD else
          extrap_optax.minibatch_sgd(0.5, momentum=0.0,
                                     axis_name=workers.axis_name))
    params = workers.replicate({"w": jnp.zeros(2)})
    opt_state = workers.map(tx.init)(params)
    params, opt_state = workers.map(
        lambda p, s, g: _apply(tx, p, s, g))(params, opt_state, grads)
    y, state = train.evaluation_point(workers, params, opt_state, model_state)
    np.testing.assert_allclose(y["w"], expected)
    np.testing.assert_array_equal(state["mean"], 2.0)
    if method is methods.POST_LOCAL_SGD:   # the workers really differ
      assert not np.allclose(params["w"][0], params["w"][1])


def _apply(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _modules():
  return sorted(EXPERIMENTS.rglob("*.py"))


def test_every_method_name_is_in_one_module_only():
  """A method is one record: no other module of experiments/ names it
  (the library's own functions, `extrap_optax.<name>`, aside)."""
  offenders = []
  for name in methods.METHODS:
    pattern = re.compile(rf"(?<!extrap_optax\.)\b{name}\b")
    for path in _modules():
      if path.name == "methods.py" and path.parent == EXPERIMENTS:
        continue
      for number, line in enumerate(path.read_text().splitlines(), 1):
        if pattern.search(line):
          offenders.append(f"{path.relative_to(EXPERIMENTS)}:{number}: {name}")
  assert not offenders, "\n".join(offenders)


def test_no_module_is_over_500_lines_and_the_trainer_under_400():
  sizes = {path.relative_to(EXPERIMENTS).as_posix():
           len(path.read_text().splitlines()) for path in _modules()}
  assert {p: n for p, n in sizes.items() if n > 500} == {}
  assert sizes["train.py"] < 400
