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
from tests import contract

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
# round the last bit differently, by how much depending on the CPU; over 20
# steps that grows to ~1e-7 of the tensor's scale: checked to 1e-5 of it.
def _assert_same(got, expected, jit, err_msg):
  if jit:
    contract.assert_trees_close(got, expected, err_msg=err_msg)
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


@pytest.mark.parametrize("noise", ["uniform", "smoothout"])
def test_inject_hyperparams_noise_seed_gives_the_same_draws(noise):
  params = {"w": jnp.full((3, 2), 0.5), "b": jnp.full((2,), 0.5)}
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  factory = lambda learning_rate, seed: extrap_optax.noise_extrap_sgd(
      learning_rate, extrapolation_rate=0.01, noise=noise, seed=seed)
  plain = factory(0.1, 5)
  injected = optax.inject_hyperparams(factory)(learning_rate=0.1, seed=5)
  plain_state, injected_state = plain.init(params), injected.init(params)
  update = jax.jit(injected.update)
  plain_params = injected_params = params
  for _ in range(3):
    updates, plain_state = plain.update(grads, plain_state, plain_params)
    plain_params = optax.apply_updates(plain_params, updates)
    updates, injected_state = update(grads, injected_state, injected_params)
    injected_params = optax.apply_updates(injected_params, updates)
  # Equal draws; the last bit may differ (a constant seed is folded in XLA).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               injected_params, plain_params)


@pytest.mark.parametrize("seed", [1.0, True, "1", np.arange(2)])
def test_non_integer_noise_seed_is_named(seed):
  with pytest.raises(ValueError, match="`seed` must be an int or an integer"):
    extrap_optax.filterwise_noise(seed)


# 8. The LARS-scaled past gradient: App. C.1's reading of γ̂ (γ̂ = c·γ̃/K).

TRUST_WEIGHT_DECAY = 1e-2


def _np_trust_ratio(grads, params, weight_decay, decayed, eps=1e-8):
  """ζ_j = ‖y_j‖·g_j / (‖g_j‖ + λ_j‖y_j‖ + ε) per tensor j, in float64; ζ_j = g_j
  where ‖y_j‖ or ‖g_j‖ is 0 (as LARC leaves such tensors unscaled)."""
  zeta = {}
  for name, g in grads.items():
    g = np.asarray(g, np.float64)
    y = np.asarray(params[name], np.float64)
    g_norm, y_norm = np.sqrt(np.sum(g**2)), np.sqrt(np.sum(y**2))
    lam = weight_decay if decayed[name] else 0.0
    zeta[name] = (g if g_norm == 0 or y_norm == 0
                  else y_norm * g / (g_norm + lam * y_norm + eps))
  return zeta


def _trust_ratio_tree(seed=4):
  """y and g over a conv kernel (HWIO), a matrix, a bias, a tensor that is 0 in y
  and a tensor whose gradient is 0."""
  rng = np.random.default_rng(seed)
  shapes = {"conv": (3, 3, 2, 4), "dense": (5, 3), "bias": (3,),
            "zero_param": (4, 2), "zero_grad": (2, 3)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  # Gradients ten times smaller than the weights: the trust ratio is far from 1.
  grads = {k: 0.1 * rng.normal(size=s) for k, s in shapes.items()}
  params["zero_param"][:] = 0.0
  grads["zero_grad"][:] = 0.0
  to32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  return to32(params), to32(grads)


def _context(grads, next_params, params=None):
  return extrap_optax.PerturbationContext(
      local_grads=grads, mean_grads=grads,
      params=next_params if params is None else params, next_params=next_params,
      base_state=(), next_base_state=(), next_count=jnp.ones((), jnp.int32),
      worker_index=jnp.zeros((), jnp.int32))


_ALL = ("conv", "dense", "bias", "zero_param", "zero_grad")
_TRUST_RATIO_DECAY = [
    pytest.param(0.0, None, {k: True for k in _ALL}, id="no_decay"),
    # None means every tensor, as for scale_by_larc.
    pytest.param(0.1, None, {k: True for k in _ALL}, id="decay_all"),
    pytest.param(0.1, extrap_optax.matrices_only,
                 {k: k != "bias" for k in _ALL}, id="matrices_only"),
    pytest.param(0.5, {"conv": True, "dense": False, "bias": True,
                       "zero_param": True, "zero_grad": False},
                 {"conv": True, "dense": False, "bias": True,
                  "zero_param": True, "zero_grad": False}, id="pytree_mask"),
]


@pytest.mark.parametrize(("weight_decay", "mask", "decayed"), _TRUST_RATIO_DECAY)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_trust_ratio_past_gradient_matches_numpy(weight_decay, mask, decayed, jit):
  next_params, grads = _trust_ratio_tree()
  # ζ uses y_{t+1} (the point it is used at), not y_t: give y_t other norms.
  params = jax.tree.map(lambda y: 3.0 * y + 1.0, next_params)
  source = extrap_optax.past_gradient(
      "trust_ratio", weight_decay=weight_decay, weight_decay_mask=mask)
  zeta = (jax.jit(source) if jit else source)(_context(grads, next_params, params))
  expected = _np_trust_ratio(grads, next_params, weight_decay, decayed)
  for name in _ALL:
    assert zeta[name].dtype == jnp.float32, name
    np.testing.assert_allclose(zeta[name], expected[name], rtol=1e-5, err_msg=name)
  # Zero norms: left unscaled, exactly.
  for name in ("zero_param", "zero_grad"):
    np.testing.assert_array_equal(zeta[name], grads[name], err_msg=name)
  # The scaling acts (the reference is not the raw gradient).
  assert not np.allclose(zeta["conv"], grads["conv"], rtol=0.1)


def test_trust_ratio_past_gradient_keeps_the_gradient_dtype():
  next_params, grads = _trust_ratio_tree()
  grads16 = jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads)
  zeta = jax.jit(extrap_optax.past_gradient("trust_ratio", weight_decay=0.1))(
      _context(grads16, next_params))
  expected = _np_trust_ratio(grads16, next_params, 0.1, {k: True for k in _ALL})
  for name in _ALL:
    assert zeta[name].dtype == jnp.bfloat16, name
    np.testing.assert_allclose(np.asarray(zeta[name], np.float32), expected[name],
                               rtol=1e-2, atol=1e-6, err_msg=name)


def test_unscaled_past_gradient_is_the_local_gradient():
  next_params, grads = _trust_ratio_tree()
  zeta = extrap_optax.past_gradient()(_context(grads, next_params))
  assert zeta is grads


def _trust_ratio_problem(seed=5):
  """Per-worker quadratics ½‖c_k ⊙ p − d_k‖² over a conv kernel, a matrix and a
  bias, and a matrix that the loss ignores (zero gradient), in float64."""
  rng = np.random.default_rng(seed)
  shapes = {"conv": (2, 2, 3, 4), "dense": (5, 3), "bias": (3,)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  params["unused"] = rng.normal(size=(2, 2))
  coefficients = {k: rng.uniform(0.5, 1.5, size=(K,) + s) for k, s in shapes.items()}
  offsets = {k: rng.normal(size=(K,) + s) for k, s in shapes.items()}
  return params, coefficients, offsets


def _trust_ratio_loss(params, coefficients, offsets):
  return sum(0.5 * jnp.sum(jnp.square(coefficients[k] * params[k] - offsets[k]))
             for k in coefficients)


def _np_quadratic_grads(point, coefficients, offsets, worker):
  """∇ of worker k's quadratic at `point`, in float64 (0 for ignored tensors)."""
  grads = {}
  for name, p in point.items():
    p = np.asarray(p, np.float64)
    if name in coefficients:
      c, d = coefficients[name][worker], offsets[name][worker]
      grads[name] = c * (c * p - d)
    else:
      grads[name] = np.zeros_like(p)
  return grads


def _np_larc_or_decay(mean_grad, y, weight_decay, trust_coefficient, lr):
  """The base step's d for one tensor: coupled L2, or apex LARC (clip mode)."""
  if trust_coefficient is None:
    return mean_grad + weight_decay * y
  g_norm, y_norm = np.linalg.norm(mean_grad.ravel()), np.linalg.norm(y.ravel())
  if g_norm == 0 or y_norm == 0:
    return mean_grad
  ratio = trust_coefficient * y_norm / (g_norm + weight_decay * y_norm + 1e-8)
  return min(ratio / lr, 1.0) * (mean_grad + weight_decay * y)


def _algorithm_1_on_a_tree(x0, grads_at, num_workers, lr, extrapolation_rate,
                           momentum, weight_decay, decayed, trust_coefficient,
                           direction, num_steps):
  """Algorithm 1 in float64 over a dict of tensors, line by line as
  `_algorithm_1`, with two additions of this library's base step: the coupled L2
  [+ LARC] d_t of the averaged gradient at y_t = x_t + u·v_t, and a perturbation
  ζ^k_t = direction(g^k_{t−1}, y_t) in the extrapolation step.

  Returns, for each step t, y_t and the points x^k_{t+1/2} of the workers.
  """
  x = {k: np.array(v, np.float64) for k, v in x0.items()}
  v = {k: np.zeros_like(p) for k, p in x.items()}
  previous_grads = None
  trajectory = []
  for t in range(num_steps):
    y = {k: x[k] + momentum * v[k] for k in x}
    if t == 0:  # footnote 1: no extrapolation at t = 0
      quarter = [dict(x) for _ in range(num_workers)]
    else:
      quarter = []
      for w in range(num_workers):
        zeta = direction(previous_grads[w], y)
        quarter.append({k: x[k] - extrapolation_rate * zeta[k] for k in x})
    half = [{k: quarter[w][k] + momentum * v[k] for k in x}
            for w in range(num_workers)]
    grads = [grads_at(half[w], w) for w in range(num_workers)]
    trajectory.append((y, half))
    for k in x:
      mean_grad = sum(g[k] for g in grads) / num_workers
      d = _np_larc_or_decay(mean_grad, y[k], weight_decay if decayed[k] else 0.0,
                            trust_coefficient, lr)
      v[k] = momentum * v[k] - lr * d
      x[k] = x[k] + v[k]
    previous_grads = grads
  return trajectory


@pytest.mark.parametrize("trust_coefficient", [None, 0.02], ids=["no_lars", "lars"])
def test_trust_ratio_extrap_sgd_follows_algorithm_1(trust_coefficient):
  x0, c, d = _trust_ratio_problem()
  num_steps, lr = 3, 0.1
  decayed = {k: np.ndim(p) >= 2 for k, p in x0.items()}  # the default mask
  direction = lambda g, y: _np_trust_ratio(g, y, TRUST_WEIGHT_DECAY, decayed)
  expected = _algorithm_1_on_a_tree(
      x0, lambda point, w: _np_quadratic_grads(point, c, d, w), 1, lr, GAMMA_HAT,
      0.9, TRUST_WEIGHT_DECAY, decayed, trust_coefficient, direction, num_steps)

  tx = extrap_optax.extrap_sgd(
      lr, extrapolation_rate=GAMMA_HAT, momentum=0.9,
      weight_decay=TRUST_WEIGHT_DECAY, trust_coefficient=trust_coefficient,
      extrapolation_scaling="trust_ratio")
  data = jax.tree.map(lambda x: jnp.asarray(x[0], jnp.float32), (c, d))

  @jax.jit
  def step(params, state):
    grads = jax.grad(_trust_ratio_loss)(params, *data)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), x0)
  state = tx.init(params)
  for t, (y, half) in enumerate(expected):
    shared = extrap_optax.evaluation_params(params, state)
    for name in x0:
      np.testing.assert_allclose(shared[name], y[name], rtol=1e-5, atol=1e-6,
                                 err_msg=f"y_t, {name}, t={t}")
      np.testing.assert_allclose(params[name], half[0][name], rtol=1e-5, atol=1e-6,
                                 err_msg=f"x_(t+1/2), {name}, t={t}")
    params, state = step(params, state)
  # The extrapolation acted: the held point is not the shared point.
  offset = jax.tree.map(jnp.subtract, params, extrap_optax.evaluation_params(params, state))
  assert np.max(np.abs(offset["conv"])) > 1e-3


def test_trust_ratio_offsets_of_k_workers():
  """On K workers, z^k − y = −γ̂·ζ(g^k, y) with each worker's own gradient."""
  x0, c, d = _trust_ratio_problem()
  workers = extrap_optax.Workers(K)
  tx = extrap_optax.extrap_sgd(
      0.1, extrapolation_rate=GAMMA_HAT, weight_decay=TRUST_WEIGHT_DECAY,
      trust_coefficient=0.02, extrapolation_scaling="trust_ratio",
      axis_name=workers.axis_name)

  def step(params, state, data):
    grads = jax.grad(_trust_ratio_loss)(params, *data)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = workers.map(step)
  params = workers.replicate(jax.tree.map(lambda x: np.asarray(x, np.float32), x0))
  state = workers.map(tx.init)(params)
  data = workers.put(jax.tree.map(lambda x: np.asarray(x, np.float32), (c, d)))
  decayed = {k: np.ndim(p) >= 2 for k, p in x0.items()}
  as64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  for t in range(3):
    held = as64(params)
    grads = [_np_quadratic_grads({k: v[w] for k, v in held.items()}, c, d, w)
             for w in range(K)]
    params, state = step(params, state, data)
    shared = as64(extrap_optax.evaluation_params(params, state))
    offsets = [{k: np.asarray(params[k][w], np.float64) - shared[k][w] for k in x0}
               for w in range(K)]
    for w in range(K):
      y = {k: v[w] for k, v in shared.items()}
      zeta = _np_trust_ratio(grads[w], y, TRUST_WEIGHT_DECAY, decayed)
      for name in x0:
        np.testing.assert_array_equal(shared[name][w], shared[name][0])
        np.testing.assert_allclose(
            offsets[w][name], -GAMMA_HAT * zeta[name], rtol=1e-4, atol=1e-6,
            err_msg=f"{name}, worker {w}, step {t}")
    assert not np.allclose(offsets[0]["conv"], offsets[1]["conv"])
    np.testing.assert_array_equal(offsets[0]["unused"], 0.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(scaling="lars"), r"`scaling`.*\('none', 'trust_ratio'\).*'lars'"),
    (dict(scaling="trust_ratio", weight_decay=-1e-4), "`weight_decay`"),
    (dict(scaling="trust_ratio", eps=-1.0), "`eps`"),
], ids=["scaling", "weight_decay", "eps"])
def test_bad_past_gradient_argument_is_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    extrap_optax.past_gradient(**kwargs)


def test_past_gradient_options_are_keyword_only():
  with pytest.raises(TypeError):
    extrap_optax.past_gradient("trust_ratio", 1e-4)


def test_trust_ratio_mask_structure_is_checked():
  source = extrap_optax.past_gradient(
      "trust_ratio", weight_decay=0.1, weight_decay_mask={"w": True})
  with pytest.raises(ValueError, match="`weight_decay_mask`"):
    source(_context(_PARAMS, _PARAMS))


@pytest.mark.parametrize("factory", [
    lambda **kw: extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01, **kw),
    lambda **kw: extrap_optax.post_local_sgd(
        0.1, start_step=1, sync_period=2, extrapolation_rate=0.01, **kw),
], ids=["extrap_sgd", "post_local_sgd"])
def test_unknown_extrapolation_scaling_is_named(factory):
  with pytest.raises(ValueError,
                     match=r"`extrapolation_scaling`.*\('none', 'trust_ratio'\)"):
    factory(extrapolation_scaling="trust")


def test_post_local_trust_ratio_needs_the_default_perturbation():
  with pytest.raises(ValueError, match="`extrapolation_scaling`.*`perturbation`"):
    extrap_optax.post_local_sgd(
        0.1, start_step=1, sync_period=2, extrapolation_rate=0.01,
        perturbation=extrap_optax.gradient_noise(), extrapolation_scaling="trust_ratio")


def test_post_local_sgd_before_t0_is_trust_ratio_extrap_sgd():
  x0, c, d = _trust_ratio_problem()
  hp = dict(extrapolation_rate=GAMMA_HAT, weight_decay=TRUST_WEIGHT_DECAY,
            trust_coefficient=0.02, extrapolation_scaling="trust_ratio")
  data = jax.tree.map(lambda x: jnp.asarray(x[0], jnp.float32), (c, d))
  results = []
  for tx in (extrap_optax.extrap_sgd(0.1, **hp),
             extrap_optax.post_local_sgd(0.1, start_step=10, sync_period=2, **hp)):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), x0)
    state = tx.init(params)
    for _ in range(3):
      grads = jax.grad(_trust_ratio_loss)(params, *data)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    results.append(params)
  for name in x0:
    contract.assert_trees_close(results[1][name], results[0][name], err_msg=name)


# The trainer's configuration of the option (experiments/train.py).

def _toy_extrap_config(method="extrap_sgd"):
  pytest.importorskip("ml_collections")
  from experiments import configs
  config = configs.get_preset("fig1", "toy").runs["extrap_sgd"]
  config.optimizer.method = method
  config.optimizer.extrapolation_scaling = "trust_ratio"
  config.optimizer.extrapolation_scale = 2.0
  config.schedule.warmup_epochs = 1.0
  config.schedule.reference_batch_size = 2
  config.optimizer.local_start_epoch = 5.0  # post-local SGD: local from t0 = 20
  return config


@pytest.mark.parametrize("method", ["extrap_sgd", "post_local_extrap_sgd"])
def test_trainer_builds_trust_ratio_extrapolation(method):
  from experiments import train
  config = _toy_extrap_config(method)
  opt, num_workers = config.optimizer, config.workers.num_workers
  steps_per_epoch, num_steps = 4, 40
  learning_rate = train.make_schedule(config, steps_per_epoch, num_steps)
  tx = train.make_optimizer(config, learning_rate, steps_per_epoch, num_steps,
                            axis_name=None)
  # γ_peak = γ0·K·B/B_ref, the value the schedule reaches after its warm-up.
  peak = (opt.base_learning_rate * num_workers * config.workers.local_batch_size
          / config.schedule.reference_batch_size)
  np.testing.assert_allclose(float(learning_rate(steps_per_epoch)), peak, rtol=1e-6)
  x0, c, d = _trust_ratio_problem()
  data = jax.tree.map(lambda x: jnp.asarray(x[0], jnp.float32), (c, d))
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), x0)
  state = tx.init(params)
  decayed = {k: np.ndim(p) >= 2 for k, p in x0.items()}
  for t in range(3):  # inside the warm-up: γ̂ follows γ_t
    grads = jax.grad(_trust_ratio_loss)(params, *data)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    shared = extrap_optax.evaluation_params(params, state)
    rate = (opt.extrapolation_scale * opt.trust_coefficient / num_workers
            * float(learning_rate(t + 1)) / peak)
    zeta = _np_trust_ratio(grads, shared, opt.weight_decay, decayed)
    for name in x0:
      np.testing.assert_allclose(
          np.asarray(params[name], np.float64) - np.asarray(shared[name], np.float64),
          -rate * zeta[name], rtol=1e-4, atol=1e-7, err_msg=f"{name}, step {t}")


@pytest.mark.parametrize(("changes", "match"), [
    (dict(trust_coefficient=0.0),
     r"optimizer\.extrapolation_scaling.*optimizer\.trust_coefficient.*> 0"),
    (dict(extrapolation_scaling="lars"),
     r"optimizer\.extrapolation_scaling.*\('none', 'trust_ratio'\)"),
    (dict(method="noise_extrap_sgd"), r"optimizer\.extrapolation_scaling.*'none'"),
    (dict(method="minibatch_sgd"), r"optimizer\.extrapolation_scaling.*'none'"),
], ids=["without_lars", "unknown", "noise_extrap_sgd", "minibatch_sgd"])
def test_trainer_rejects_bad_extrapolation_scaling(changes, match):
  from experiments import train
  config = _toy_extrap_config()
  for key, value in changes.items():
    setattr(config.optimizer, key, value)
  learning_rate = train.make_schedule(config, 4, 40)
  with pytest.raises(ValueError, match=match):
    train.make_optimizer(config, learning_rate, 4, 40, axis_name=None)


# Heavy-ball momentum (`nesterov=False`).

def _heavy_ball_extrap_sgd(a, b, x0, lr, extrapolation_rate, momentum, num_steps):
  """EXTRAP-SGD on a heavy-ball base in float64, in the PyTorch momentum form:

  z^k_t = y_t − γ̂ g^k_{t−1} (z^k_0 = y_0), ḡ_t = mean_k ∇f_k(z^k_t),
  b_t = u b_{t−1} + ḡ_t, y_{t+1} = y_t − γ b_t. Returns (y_t, z_t) per step.
  """
  y, buf, previous = x0.copy(), np.zeros_like(x0), None
  trajectory = []
  for _ in range(num_steps):
    z = np.stack([y if previous is None else y - extrapolation_rate * previous[k]
                  for k in range(K)])
    trajectory.append((y, z))
    grads = [_least_squares_grad(z[k], a[k], b[k]) for k in range(K)]
    buf = momentum * buf + sum(grads) / K
    y = y - lr * buf
    previous = grads
  return trajectory


def test_heavy_ball_extrap_sgd_matches_numpy():
  a, b, x0 = _least_squares_problem()
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.05, momentum=0.9,
                               nesterov=False, axis_name=AXIS)
  step = _vmapped_step(tx, _least_squares_loss)
  params = _stack(x0.astype(np.float32), K)
  state = jax.vmap(tx.init)(params)
  data = (jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  expected = _heavy_ball_extrap_sgd(a, b, x0, 0.1, 0.05, 0.9, 15)
  for t, (y, z) in enumerate(expected):
    np.testing.assert_allclose(params, z, rtol=1e-5, atol=1e-6, err_msg=f"z at t={t}")
    np.testing.assert_allclose(extrap_optax.evaluation_params(params, state)[0], y,
                               rtol=1e-5, atol=1e-6, err_msg=f"y at t={t}")
    params, state = step(params, state, data)


@pytest.mark.parametrize("transform", ["extrap_sgd", "minibatch_sgd", "post_local_sgd"])
def test_one_worker_heavy_ball_is_optax_sgd_bit_for_bit(transform):
  params, (inputs, targets) = _mlp_problem(1)
  data = (inputs[0], targets[0])
  reference = optax.sgd(0.1, momentum=0.9, nesterov=False)
  hp = dict(momentum=0.9, nesterov=False)
  tx = {"extrap_sgd": lambda: extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.0, **hp),
        "minibatch_sgd": lambda: extrap_optax.minibatch_sgd(0.1, **hp),
        "post_local_sgd": lambda: extrap_optax.post_local_sgd(
            0.1, start_step=100, sync_period=2, **hp)}[transform]()

  def make_step(tx):
    def step(params, state, data):
      updates, state = tx.update(jax.grad(_mlp_loss)(params, *data), state, params)
      return optax.apply_updates(params, updates), state
    return step

  with jax.disable_jit():
    got, expected = [_trajectory(make_step(t), params, t.init(params), data, 6)
                     for t in (tx, reference)]
  for t, (step_got, step_expected) in enumerate(zip(got, expected)):
    for name in params:
      np.testing.assert_array_equal(step_got[name], step_expected[name], f"step {t}")


def test_nesterov_must_be_a_bool():
  with pytest.raises(ValueError, match="`nesterov` must be True or False"):
    extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01, nesterov="yes")


# Masks: one check when the optimizer is built, the structure at init.

_MASKED_FACTORIES = {
    "minibatch_sgd": lambda **kw: extrap_optax.minibatch_sgd(0.1, **kw),
    "extrap_sgd": lambda **kw: extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01, **kw),
    "trust_ratio": lambda **kw: extrap_optax.extrap_sgd(
        0.1, extrapolation_rate=0.01, extrapolation_scaling="trust_ratio", **kw),
    "post_local_sgd": lambda **kw: extrap_optax.post_local_sgd(
        0.1, start_step=10, sync_period=2, **kw),
    "larc_sgd": lambda **kw: extrap_optax.larc_sgd(0.1, **kw),
}


@pytest.mark.parametrize("factory", sorted(_MASKED_FACTORIES))
def test_a_mask_that_is_not_a_mask_fails_when_the_optimizer_is_built(factory):
  with pytest.raises(ValueError, match=r"`weight_decay_mask` must be None, True/False"
                                       r"(.|\n)*float(.|\n)*p.ndim >= 2"):
    _MASKED_FACTORIES[factory](weight_decay=1e-2, weight_decay_mask={"w": 1.0, "b": 0.0})


@pytest.mark.parametrize("factory", sorted(_MASKED_FACTORIES))
def test_a_mask_that_does_not_match_the_params_fails_at_init(factory):
  tx = _MASKED_FACTORIES[factory](weight_decay=1e-2, weight_decay_mask={"w": True})
  with pytest.raises(ValueError, match=r"`weight_decay_mask` must have the same tree"):
    tx.init(_PARAMS)


@pytest.mark.parametrize("factory", ["minibatch_sgd", "extrap_sgd", "post_local_sgd"])
def test_mask_true_decays_every_tensor(factory):
  """True is accepted by every optimizer: the shared point steps as with optax's
  add_decayed_weights, unmasked (biases decayed too)."""
  params, (inputs, targets) = _mlp_problem(1)
  grads = jax.grad(_mlp_loss)(params, inputs[0], targets[0])
  tx = _MASKED_FACTORIES[factory](weight_decay=1e-2, weight_decay_mask=True)
  reference = optax.chain(optax.add_decayed_weights(1e-2),
                          optax.sgd(0.1, momentum=0.9, nesterov=True))
  with jax.disable_jit():
    updates, state = tx.update(grads, tx.init(params), params)
    shared = extrap_optax.evaluation_params(optax.apply_updates(params, updates), state)
    expected = optax.apply_updates(
        params, reference.update(grads, reference.init(params), params)[0])
  for name in params:
    np.testing.assert_array_equal(shared[name], expected[name])


@pytest.mark.parametrize(("kwargs", "fix"), [
    (dict(momentum=1.0), r"`momentum` must lie in \[0, 1\)(.|\n)*The paper uses 0.9"),
    (dict(extrapolation_rate=-0.01), r"`extrapolation_rate` must be non-negative"
                                     r"(.|\n)*Pass a value >= 0"),
])
def test_bad_hyperparameters_name_the_fix(kwargs, fix):
  with pytest.raises(ValueError, match=fix):
    extrap_optax.extrap_sgd(0.1, **({"extrapolation_rate": 0.01} | kwargs))
