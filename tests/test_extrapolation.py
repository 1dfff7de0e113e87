"""EXTRAP-SGD and its noise variants against independent references.

References: Algorithm 1 of the paper re-implemented in NumPy (float64), PyTorch's
SGD, optax's SGD, and the noise definitions of §3.2 evaluated in NumPy.
"""

import functools

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax

AXIS = "workers"


def _stack(tree, num_workers):
  return jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * num_workers), tree)


def _vmapped_step(tx, loss, jit=True):
  """A step of K workers under vmap; the data are stacked per worker."""

  def step(params, state, data):
    grads = jax.grad(loss)(params, *data)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  vmapped = jax.vmap(step, axis_name=AXIS)
  return jax.jit(vmapped) if jit else vmapped


# 1. Algorithm 1, as printed in the paper.

K = 4
DIM = 6
LOCAL_BATCH = 10
ALGORITHM_1_STEPS = 25


def _least_squares_problem():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(K, LOCAL_BATCH, DIM))
  b = rng.normal(size=(K, LOCAL_BATCH))
  x0 = rng.normal(size=(DIM,))
  return a, b, x0


def _least_squares_loss(x, a, b):
  return jnp.sum(jnp.square(a @ x - b)) / (2 * LOCAL_BATCH)


def _least_squares_grad(x, a, b):
  return a.T @ (a @ x - b) / LOCAL_BATCH


def _algorithm_1(a, b, x0, lr, extrapolation_rate, momentum, num_steps):
  """Algorithm 1 (EXTRAP-SGD) in float64, line by line.

  Returns, for each step t, x_t + u·v_t and the K points x^k_{t+1/2} at which the
  workers evaluate their gradients.
  """
  x = x0.copy()
  v = np.zeros_like(x0)
  previous_grads = None
  trajectory = []
  for t in range(num_steps):
    if t == 0:  # footnote 1: no extrapolation at t = 0
      quarter = [x for _ in range(K)]
    else:
      quarter = [x - extrapolation_rate * previous_grads[k] for k in range(K)]
    half = [quarter[k] + momentum * v for k in range(K)]
    grads = [_least_squares_grad(half[k], a[k], b[k]) for k in range(K)]
    trajectory.append((x + momentum * v, np.stack(half)))
    v = momentum * v - lr / K * sum(grads)
    x = x + v
    previous_grads = grads
  return trajectory


@functools.cache
def _run_extrap_sgd_on_least_squares(extrapolation_rate):
  a, b, x0 = _least_squares_problem()
  tx = extrap_optax.extrap_sgd(
      0.1, extrapolation_rate=extrapolation_rate, momentum=0.9, weight_decay=0.0,
      axis_name=AXIS)
  step = _vmapped_step(tx, _least_squares_loss)
  params = _stack(x0.astype(np.float32), K)
  state = jax.vmap(tx.init)(params)
  data = (jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  trajectory = []
  for _ in range(ALGORITHM_1_STEPS):
    trajectory.append((extrap_optax.evaluation_params(params, state), params))
    params, state = step(params, state, data)
  return trajectory


@pytest.mark.parametrize("extrapolation_rate", [0.05, 0.0])
def test_extrap_sgd_follows_algorithm_1(extrapolation_rate):
  a, b, x0 = _least_squares_problem()
  expected = _algorithm_1(a, b, x0, 0.1, extrapolation_rate, 0.9, ALGORITHM_1_STEPS)
  actual = _run_extrap_sgd_on_least_squares(extrapolation_rate)
  for t, ((shared, params), (x_plus_uv, half)) in enumerate(zip(actual, expected)):
    for k in range(K):
      np.testing.assert_allclose(
          shared[k], x_plus_uv, rtol=1e-5, atol=1e-6,
          err_msg=f"y_t != x_t + u v_t at t={t}, worker {k}")
    np.testing.assert_allclose(
        params, half, rtol=1e-5, atol=1e-6, err_msg=f"params != x^k_(t+1/2) at t={t}")


def test_extrapolation_rate_changes_the_trajectory():
  with_extrapolation = _run_extrap_sgd_on_least_squares(0.05)[-1][1]
  without = _run_extrap_sgd_on_least_squares(0.0)[-1][1]
  assert np.max(np.abs(with_extrapolation - without)) > 1e-3
  # Each worker extrapolates with its own gradient: the held points differ.
  assert np.max(np.abs(with_extrapolation[0] - with_extrapolation[1])) > 1e-3


# 2. Parity with PyTorch's SGD (Nesterov, coupled weight decay).

def _regression_data():
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(16, 5)).astype(np.float32)
  targets = rng.normal(size=(16, 3)).astype(np.float32)
  params = {"w": rng.normal(size=(5, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  return inputs, targets, params


@pytest.mark.parametrize("use_schedule", [False, True], ids=["constant", "schedule"])
def test_zero_extrapolation_matches_torch_nesterov_sgd(use_schedule):
  torch = pytest.importorskip("torch", reason="PyTorch parity needs torch (CPU build)")
  inputs, targets, init = _regression_data()
  num_steps, weight_decay = 12, 0.05
  schedule = optax.warmup_cosine_decay_schedule(0.01, 0.2, 4, num_steps, 0.02)
  learning_rate = schedule if use_schedule else 0.1

  tx = extrap_optax.extrap_sgd(
      learning_rate, extrapolation_rate=0.0, momentum=0.9, weight_decay=weight_decay,
      weight_decay_mask={"w": True, "b": True})

  def loss(params):
    return 0.5 * jnp.mean(jnp.sum(
        jnp.square(inputs @ params["w"] + params["b"] - targets), axis=-1))

  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)

  torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
  optimizer = torch.optim.SGD(
      list(torch_params.values()), lr=0.1, momentum=0.9, nesterov=True,
      weight_decay=weight_decay)
  torch_inputs, torch_targets = torch.tensor(inputs), torch.tensor(targets)

  for t in range(num_steps):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)

    if use_schedule:
      optimizer.param_groups[0]["lr"] = float(schedule(t))
    optimizer.zero_grad()
    predictions = torch_inputs @ torch_params["w"] + torch_params["b"]
    (0.5 * ((predictions - torch_targets) ** 2).sum(-1).mean()).backward()
    optimizer.step()

    for name in init:
      np.testing.assert_allclose(
          params[name], torch_params[name].detach().numpy(), rtol=1e-5, atol=1e-6,
          err_msg=f"{name} at step {t}")


# 3. Bit identity with mini-batch SGD and optax.

def _mlp_loss(params, inputs, targets):
  hidden = jnp.tanh(inputs @ params["w1"] + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - targets))


def _mlp_problem(num_workers, seed=2, local_batch=4):
  rng = np.random.default_rng(seed)
  params = {"w1": rng.normal(size=(5, 8)), "b1": rng.normal(size=(8,)),
            "w2": rng.normal(size=(8, 2)), "b2": rng.normal(size=(2,))}
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  inputs = rng.normal(size=(num_workers, local_batch, 5)).astype(np.float32)
  targets = rng.normal(size=(num_workers, local_batch, 2)).astype(np.float32)
  return params, (inputs, targets)


def _trajectory(step, params, state, data, num_steps):
  out = []
  for _ in range(num_steps):
    params, state = step(params, state, data)
    out.append(params)
  return out


# Op by op the two compute the same float operations in the same order: bit for
# bit. Under jit, XLA:CPU fuses (and contracts multiply-adds in) extrap_sgd's
# params + (s + (δ_new − δ_old)) differently from optax's params + s, which can
# round the last bit differently; over 20 steps that grows to ~2e-6: checked to 1e-5.
def _assert_same(got, expected, jit, err_msg):
  if jit:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg=err_msg)
  else:
    np.testing.assert_array_equal(got, expected, err_msg=err_msg)


@pytest.mark.parametrize("jit", [False, True])
def test_zero_extrapolation_is_minibatch_sgd_bit_for_bit(jit):
  params, data = _mlp_problem(K)
  hp = dict(momentum=0.9, weight_decay=1e-2, axis_name=AXIS)
  trajectories = []
  for tx in (extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.0, **hp),
             extrap_optax.minibatch_sgd(0.1, **hp)):
    stacked = _stack(params, K)
    trajectories.append(_trajectory(
        _vmapped_step(tx, _mlp_loss, jit), stacked, jax.vmap(tx.init)(stacked), data,
        20))
  for t, (extrap, minibatch) in enumerate(zip(*trajectories)):
    for name in params:
      _assert_same(extrap[name], minibatch[name], jit, f"step {t}")


@pytest.mark.parametrize(("transform", "jit"), [
    ("extrap_sgd", False), ("extrap_sgd", True),
    ("minibatch_sgd", False), ("minibatch_sgd", True)])
def test_one_worker_is_optax_sgd_bit_for_bit(transform, jit):
  params, (inputs, targets) = _mlp_problem(1)
  data = (inputs[0], targets[0])
  mask = extrap_optax.matrices_only(params)
  reference = optax.chain(optax.add_decayed_weights(1e-2, mask),
                          optax.sgd(0.1, momentum=0.9, nesterov=True))
  hp = dict(momentum=0.9, weight_decay=1e-2, weight_decay_mask=mask)
  tx = (extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.0, **hp)
        if transform == "extrap_sgd" else extrap_optax.minibatch_sgd(0.1, **hp))

  def make_step(tx):
    def step(params, state, data):
      updates, state = tx.update(jax.grad(_mlp_loss)(params, *data), state, params)
      return optax.apply_updates(params, updates), state
    return jax.jit(step) if jit else step

  got, expected = [_trajectory(make_step(t), params, t.init(params), data, 20)
                   for t in (tx, reference)]
  for t, (step_got, step_expected) in enumerate(zip(got, expected)):
    for name in params:
      _assert_same(step_got[name], step_expected[name],
                   jit and transform == "extrap_sgd", f"step {t}")


# 5. Noise variants (§3.2).

GAMMA_HAT = 0.05


def _noise_problem(seed=3):
  """Per-worker quadratics f_k(p) = Σ ½‖c_k ⊙ p − d_k‖² over a dense kernel, a
  conv kernel (HWIO) and a bias."""
  rng = np.random.default_rng(seed)
  params = {"dense": rng.normal(size=(5, 3)), "conv": rng.normal(size=(2, 2, 3, 4)),
            "bias": rng.normal(size=(3,))}
  coefficients = {k: rng.uniform(0.5, 1.5, size=(K,) + v.shape) for k, v in params.items()}
  offsets = {k: rng.normal(size=(K,) + v.shape) for k, v in params.items()}
  to32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  return to32(params), to32(coefficients), to32(offsets)


def _quadratic_loss(params, coefficients, offsets):
  return sum(0.5 * jnp.sum(jnp.square(coefficients[k] * params[k] - offsets[k]))
             for k in params)


def _run_noise(noise, seed, num_steps=3):
  """Returns, after each step, the per-worker offsets params − y and y (stacked)."""
  params, coefficients, offsets = _noise_problem()
  tx = extrap_optax.noise_extrap_sgd(
      0.1, extrapolation_rate=GAMMA_HAT, noise=noise, seed=seed, axis_name=AXIS)
  step = _vmapped_step(tx, _quadratic_loss)
  params = _stack(params, K)
  state = jax.vmap(tx.init)(params)
  history = []
  for _ in range(num_steps):
    params, state = step(params, state, (coefficients, offsets))
    shared = extrap_optax.evaluation_params(params, state)
    history.append((jax.tree.map(jnp.subtract, params, shared), shared))
  return history


# One run per variant, shared by the tests that only inspect it.
_noise_history = functools.cache(_run_noise)


@pytest.mark.parametrize("noise", ["uniform", "gaussian", "smoothout"])
def test_isotropic_noise_is_filterwise_scaled(noise):
  for offset, shared in _noise_history(noise, 7):
    for name in ("dense", "conv"):
      # A filter is a slice along the last axis: norms over all other kernel axes.
      offset_norms = np.linalg.norm(
          np.asarray(offset[name], np.float64).reshape(K, -1, offset[name].shape[-1]),
          axis=1)
      filter_norms = np.linalg.norm(
          np.asarray(shared[name], np.float64).reshape(K, -1, shared[name].shape[-1]),
          axis=1)
      np.testing.assert_allclose(offset_norms, GAMMA_HAT * filter_norms, rtol=1e-4)
    # Parameters with ndim < 2 get no noise by default (z − y is zero up to
    # rounding: the two are computed by different expressions).
    np.testing.assert_allclose(offset["bias"], np.zeros_like(offset["bias"]), atol=1e-6)


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_isotropic_noise_is_drawn_per_worker(noise):
  for offset, _ in _noise_history(noise, 7):
    for name in ("dense", "conv"):
      flat = np.asarray(offset[name]).reshape(K, -1)
      for i in range(K):
        for j in range(i + 1, K):
          assert not np.allclose(flat[i], flat[j]), (name, i, j)


def test_smoothout_noise_is_shared_by_workers():
  for offset, _ in _noise_history("smoothout", 7):
    for name in ("dense", "conv"):
      assert np.max(np.abs(offset[name])) > 0
      for k in range(1, K):
        np.testing.assert_array_equal(offset[name][k], offset[name][0])


@pytest.mark.parametrize("noise", ["uniform", "gaussian", "smoothout"])
def test_noise_is_reproducible_from_the_seed(noise):
  first = _noise_history(noise, 7)
  again = _run_noise(noise, 7)  # a new transformation with the same seed
  other = _run_noise(noise, 8)
  for (offset, _), (same, _), (different, _) in zip(first, again, other):
    for name in ("dense", "conv"):
      np.testing.assert_array_equal(offset[name], same[name])
      assert not np.allclose(offset[name], different[name])


def test_gradient_noise_offset_is_local_minus_mean_gradient():
  params, coefficients, offsets = _noise_problem()
  tx = extrap_optax.noise_extrap_sgd(
      0.1, extrapolation_rate=GAMMA_HAT, noise="gradient", axis_name=AXIS)
  step = _vmapped_step(tx, _quadratic_loss)
  params = _stack(params, K)
  state = jax.vmap(tx.init)(params)
  c = jax.tree.map(lambda x: np.asarray(x, np.float64), coefficients)
  d = jax.tree.map(lambda x: np.asarray(x, np.float64), offsets)
  for _ in range(4):
    # g^k at the held point z^k, in NumPy.
    grads = {name: c[name] * (c[name] * np.asarray(params[name], np.float64) - d[name])
             for name in params}
    params, state = step(params, state, (coefficients, offsets))
    shared = extrap_optax.evaluation_params(params, state)
    for name in params:
      expected = -GAMMA_HAT * (grads[name] - grads[name].mean(axis=0))
      np.testing.assert_allclose(
          np.asarray(params[name], np.float64) - np.asarray(shared[name], np.float64),
          expected, rtol=1e-4, atol=1e-5, err_msg=name)


def _count_all_reduces(jaxpr):
  count = 0
  for equation in jaxpr.eqns:
    name = equation.primitive.name
    count += any(s in name for s in ("psum", "pmean", "all_reduce"))
    count += sum(_count_all_reduces(sub)
                 for sub in jax_core.jaxprs_in_params(equation.params))
  return count


def _all_reduces_in_update(tx):
  params, coefficients, offsets = _noise_problem()
  stacked = _stack(params, K)
  grads = jax.vmap(jax.grad(_quadratic_loss))(stacked, coefficients, offsets)
  state = jax.vmap(tx.init)(stacked)
  update = jax.vmap(lambda g, s, p: tx.update(g, s, p), axis_name=AXIS)
  return _count_all_reduces(jax.make_jaxpr(update)(grads, state, stacked).jaxpr)


def test_gradient_noise_adds_no_collective():
  hp = dict(learning_rate=0.1, axis_name=AXIS)
  minibatch = _all_reduces_in_update(extrap_optax.minibatch_sgd(**hp))
  assert minibatch >= 1
  assert _all_reduces_in_update(
      extrap_optax.extrap_sgd(extrapolation_rate=GAMMA_HAT, **hp)) == minibatch
  assert _all_reduces_in_update(extrap_optax.noise_extrap_sgd(
      extrapolation_rate=GAMMA_HAT, noise="gradient", **hp)) == minibatch
  # The count sees a collective that a perturbation source adds.
  averaged = lambda context: jax.lax.pmean(context.local_grads, AXIS)
  assert _all_reduces_in_update(extrap_optax.extrapolated_sgd(
      perturbation=averaged, extrapolation_rate=GAMMA_HAT, **hp)) > minibatch


# 7. Bad input: clear errors that name the argument.

_PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}
_GOOD = dict(learning_rate=0.1, extrapolation_rate=0.01, momentum=0.9, weight_decay=0.0)
_BAD = [("learning_rate", -0.1), ("extrapolation_rate", -0.01), ("weight_decay", -1e-4),
        ("momentum", 1.0), ("momentum", -0.1)]


@pytest.mark.parametrize("factory", [
    extrap_optax.extrap_sgd,
    functools.partial(extrap_optax.noise_extrap_sgd, noise="gradient"),
    functools.partial(extrap_optax.extrapolated_sgd,
                      perturbation=extrap_optax.past_gradient()),
], ids=["extrap_sgd", "noise_extrap_sgd", "extrapolated_sgd"])
@pytest.mark.parametrize(("name", "value"), _BAD)
def test_bad_hyperparameter_is_named(factory, name, value):
  with pytest.raises(ValueError, match=f"`{name}`"):
    factory(**{**_GOOD, name: value})


@pytest.mark.parametrize(("name", "value"), [b for b in _BAD if b[0] != "extrapolation_rate"])
def test_bad_minibatch_hyperparameter_is_named(name, value):
  hp = {**_GOOD, name: value}
  del hp["extrapolation_rate"]
  with pytest.raises(ValueError, match=f"`{name}`"):
    extrap_optax.minibatch_sgd(**hp)


def test_negative_extrapolation_rate_schedule_is_named():
  with pytest.raises(ValueError, match="`extrapolation_rate`"):
    extrap_optax.extrap_sgd(0.1, extrapolation_rate=lambda count: -0.01 + 0 * count)


@pytest.mark.parametrize("transform", ["extrap_sgd", "minibatch_sgd"])
def test_weight_decay_mask_structure_is_checked_at_init(transform):
  tx = getattr(extrap_optax, transform)(
      0.1, **({"extrapolation_rate": 0.01} if transform == "extrap_sgd" else {}),
      weight_decay=1e-4, weight_decay_mask={"w": True})
  with pytest.raises(ValueError, match="`weight_decay_mask`"):
    tx.init(_PARAMS)


@pytest.mark.parametrize("make", [
    lambda axis: extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01, axis_name=axis),
    lambda axis: extrap_optax.noise_extrap_sgd(
        0.1, extrapolation_rate=0.01, noise="uniform", axis_name=axis),
    lambda axis: extrap_optax.minibatch_sgd(0.1, axis_name=axis),
], ids=["extrap_sgd", "noise_extrap_sgd", "minibatch_sgd"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_unbound_axis_is_named_with_how_to_bind_it(make, jit):
  tx = make("workers")
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(_PARAMS)
  match = r"'workers'(.|\n)*vmap(.|\n)*shard_map(.|\n)*pmap"
  with pytest.raises(ValueError, match=match):
    update(_PARAMS, state, _PARAMS)


def test_partly_bound_axes_name_the_missing_axis():
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01,
                               axis_name=("devices", "workers"))
  params = _stack(_PARAMS, 2)
  state = jax.vmap(tx.init)(params)
  update = jax.vmap(tx.update, axis_name="workers")
  with pytest.raises(ValueError, match=r"axis 'devices' is not bound"):
    update(params, state, params)


def test_unknown_noise_is_named():
  with pytest.raises(ValueError, match="`noise`"):
    extrap_optax.noise_extrap_sgd(0.1, extrapolation_rate=0.01, noise="laplace")


@pytest.mark.parametrize("transform", [
    extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01),
    extrap_optax.noise_extrap_sgd(0.1, extrapolation_rate=0.01, noise="smoothout"),
], ids=["extrap_sgd", "noise_extrap_sgd"])
def test_update_without_params_is_refused(transform):
  state = transform.init(_PARAMS)
  with pytest.raises(ValueError, match="`params`"):
    transform.update(_PARAMS, state)


# optax.inject_hyperparams applied directly to the public factories.

def test_inject_hyperparams_on_the_public_factory():
  params = {"w": jnp.full((3, 2), 0.5), "b": jnp.full((2,), 0.5)}
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  plain = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01, weight_decay=1e-2)
  injected = optax.inject_hyperparams(extrap_optax.extrap_sgd)(
      learning_rate=0.1, extrapolation_rate=0.01, weight_decay=1e-2)
  expected, _ = plain.update(grads, plain.init(params), params)
  got, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)


def test_inject_hyperparams_momentum():
  params = {"w": jnp.full((3, 2), 0.5), "b": jnp.full((2,), 0.5)}
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  factory = lambda learning_rate, momentum: extrap_optax.extrap_sgd(
      learning_rate, extrapolation_rate=0.01, momentum=momentum)
  plain = factory(0.1, 0.8)
  injected = optax.inject_hyperparams(factory)(learning_rate=0.1, momentum=0.8)
  expected, _ = plain.update(grads, plain.init(params), params)
  got, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)
