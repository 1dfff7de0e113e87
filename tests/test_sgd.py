"""EXTRAP-SGD and mini-batch SGD (extrap_optax/_src/sgd.py) against independent references.

References: Algorithm 1 of the paper re-implemented in NumPy (float64),
PyTorch's SGD, optax's SGD, and App. C.1's LARS-scaled past gradient in NumPy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from tests import contract
from tests.extrapolation_problems import AXIS
from tests.extrapolation_problems import GAMMA_HAT
from tests.extrapolation_problems import K
from tests.extrapolation_problems import np_trust_ratio
from tests.extrapolation_problems import PARAMS
from tests.extrapolation_problems import stack
from tests.extrapolation_problems import trust_ratio_loss
from tests.extrapolation_problems import trust_ratio_problem
from tests.extrapolation_problems import TRUST_WEIGHT_DECAY
from tests.extrapolation_problems import vmapped_step


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
  step = vmapped_step(tx, _least_squares_loss)
  params = stack(x0.astype(np.float32), K)
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
    stacked = stack(params, K)
    trajectories.append(_trajectory(
        vmapped_step(tx, _mlp_loss, jit), stacked, jax.vmap(tx.init)(stacked), data,
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
  state = tx.init(PARAMS)
  match = r"'workers'(.|\n)*vmap(.|\n)*shard_map(.|\n)*pmap"
  with pytest.raises(ValueError, match=match):
    update(PARAMS, state, PARAMS)


def test_partly_bound_axes_name_the_missing_axis():
  tx = extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01,
                               axis_name=("devices", "workers"))
  params = stack(PARAMS, 2)
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
  state = transform.init(PARAMS)
  with pytest.raises(ValueError, match="`params`"):
    transform.update(PARAMS, state)


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
  x0, c, d = trust_ratio_problem()
  num_steps, lr = 3, 0.1
  decayed = {k: np.ndim(p) >= 2 for k, p in x0.items()}  # the default mask
  direction = lambda g, y: np_trust_ratio(g, y, TRUST_WEIGHT_DECAY, decayed)
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
    grads = jax.grad(trust_ratio_loss)(params, *data)
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
  x0, c, d = trust_ratio_problem()
  workers = extrap_optax.Workers(K)
  tx = extrap_optax.extrap_sgd(
      0.1, extrapolation_rate=GAMMA_HAT, weight_decay=TRUST_WEIGHT_DECAY,
      trust_coefficient=0.02, extrapolation_scaling="trust_ratio",
      axis_name=workers.axis_name)

  def step(params, state, data):
    grads = jax.grad(trust_ratio_loss)(params, *data)
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
      zeta = np_trust_ratio(grads[w], y, TRUST_WEIGHT_DECAY, decayed)
      for name in x0:
        np.testing.assert_array_equal(shared[name][w], shared[name][0])
        np.testing.assert_allclose(
            offsets[w][name], -GAMMA_HAT * zeta[name], rtol=1e-4, atol=1e-6,
            err_msg=f"{name}, worker {w}, step {t}")
    assert not np.allclose(offsets[0]["conv"], offsets[1]["conv"])
    np.testing.assert_array_equal(offsets[0]["unused"], 0.0)


@pytest.mark.parametrize("factory", [
    lambda **kw: extrap_optax.extrap_sgd(0.1, extrapolation_rate=0.01, **kw),
    lambda **kw: extrap_optax.post_local_sgd(
        0.1, start_step=1, sync_period=2, extrapolation_rate=0.01, **kw),
], ids=["extrap_sgd", "post_local_sgd"])
def test_unknown_extrapolation_scaling_is_named(factory):
  with pytest.raises(ValueError,
                     match=r"`extrapolation_scaling`.*\('none', 'trust_ratio'\)"):
    factory(extrapolation_scaling="trust")


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
  step = vmapped_step(tx, _least_squares_loss)
  params = stack(x0.astype(np.float32), K)
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
    tx.init(PARAMS)


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
