"""EXTRAP-ADAM against optax.adam and against Algorithm 3 computed by hand in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from tests import contract

B1, B2, EPS = 0.9, 0.98, 1e-9
LR, RATE = 0.05, 0.02


def quadratic(seed=0, dim=5):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((dim, dim))
  a = q @ q.T / dim + np.eye(dim)
  b = rng.standard_normal(dim)
  return a, b


def test_rate_zero_equals_optax_adam_bit_for_bit():
  a, b = quadratic()
  grad = lambda x: {"x": a.astype(np.float32) @ x["x"] - b.astype(np.float32)}
  tx = extrap_optax.extrap_adam(LR, extrapolation_rate=0.0, b1=B1, b2=B2, eps=EPS)
  ref = optax.adam(LR, b1=B1, b2=B2, eps=EPS)
  params = ref_params = {"x": jnp.ones(5, jnp.float32)}
  state, ref_state = tx.init(params), ref.init(ref_params)
  for _ in range(20):
    updates, state = tx.update(grad(params), state, params)
    params = optax.apply_updates(params, updates)
    ref_updates, ref_state = ref.update(grad(ref_params), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, ref_updates)
    np.testing.assert_array_equal(params["x"], ref_params["x"])


@pytest.mark.parametrize("transform", ["adam", "extrap_adam"])
def test_defaults_are_optax_adam_defaults(transform):
  """Swapping optax.adam(lr) for ours changes nothing: β2 = 0.999, ε = 1e-8."""
  a, b = quadratic(seed=3)
  grad = lambda x: {"x": a.astype(np.float32) @ x["x"] - b.astype(np.float32)}
  tx = (extrap_optax.adam(LR) if transform == "adam"
        else extrap_optax.extrap_adam(LR, extrapolation_rate=0.0))
  ref = optax.adam(LR)
  params = ref_params = {"x": jnp.ones(5, jnp.float32)}
  state, ref_state = tx.init(params), ref.init(ref_params)
  with jax.disable_jit():
    for _ in range(10):
      updates, state = tx.update(grad(params), state, params)
      params = optax.apply_updates(params, updates)
      ref_updates, ref_state = ref.update(grad(ref_params), ref_state, ref_params)
      ref_params = optax.apply_updates(ref_params, ref_updates)
      np.testing.assert_array_equal(params["x"], ref_params["x"])


@pytest.mark.parametrize("jit", [False, True])
def test_rate_zero_equals_averaged_adam_over_workers(jit):
  """Bit for bit op by op; under jit XLA may fuse the two programs differently."""
  workers = extrap_optax.Workers(4, backend="vmap")
  rng = np.random.default_rng(1)
  targets = workers.put(rng.standard_normal((4, 6)).astype(np.float32))
  candidates = {
      "extrap": extrap_optax.extrap_adam(
          LR, extrapolation_rate=0.0, axis_name=workers.axis_name),
      "adam": extrap_optax.adam(LR, axis_name=workers.axis_name),
  }
  finals = {}
  for name, tx in candidates.items():
    def step(params, state, target, tx=tx):
      grads = jax.grad(lambda p: jnp.sum((p - target) ** 2 * jnp.arange(1, 7)))(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    with jax.disable_jit(not jit):
      params = workers.replicate(jnp.zeros(6))
      state = workers.map(tx.init)(params)
      run = workers.map(step)
      for _ in range(15):
        params, state = run(params, state, targets)
    finals[name] = np.asarray(params)
  if jit:
    contract.assert_trees_close(finals["extrap"], finals["adam"])
  else:
    np.testing.assert_array_equal(finals["extrap"], finals["adam"])


@pytest.mark.parametrize("paper_literal", [True, False])
def test_single_worker_matches_algorithm_3_by_hand(paper_literal):
  """Algorithm 3 with K = 1: x_{t+1/2} = x_t − γ̂·(extrapolation), then an Adam step.

  The main step is the bias-corrected Adam of optax (docs/algorithms.md, "EXTRAP-ADAM"); the
  extrapolation is the printed formula (paper_literal) or its square-root,
  bias-corrected form.
  """
  a, b = quadratic(seed=2)
  grad_np = lambda x: a @ x - b
  x = np.linspace(-1.0, 1.0, 5)
  m = v = np.zeros(5)
  g_prev = None
  expected_points, expected_shared = [], []
  for t in range(1, 7):  # t counts Adam steps from 1
    if g_prev is None:
      z = x
    else:
      m_tilde = B1 * m + (1 - B1) * g_prev
      v_tilde = B2 * v + (1 - B2) * g_prev ** 2
      if paper_literal:
        z = x - RATE * m_tilde / (v_tilde + EPS)
      else:
        m_hat, v_hat = m_tilde / (1 - B1 ** t), v_tilde / (1 - B2 ** t)
        z = x - RATE * m_hat / (np.sqrt(v_hat) + EPS)
    expected_points.append(z)
    g = grad_np(z)
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g ** 2
    x = x - LR * (m / (1 - B1 ** t)) / (np.sqrt(v / (1 - B2 ** t)) + EPS)
    expected_shared.append(x)
    g_prev = g

  tx = extrap_optax.extrap_adam(
      LR, extrapolation_rate=RATE, b1=B1, b2=B2, eps=EPS, paper_literal=paper_literal)
  params = jnp.asarray(np.linspace(-1.0, 1.0, 5), jnp.float32)
  state = tx.init(params)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  for z_expected, x_expected in zip(expected_points, expected_shared):
    np.testing.assert_allclose(params, z_expected, rtol=2e-5, atol=2e-6)
    updates, state = tx.update(a32 @ params - b32, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(
        extrap_optax.evaluation_params(params, state), x_expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kwargs, name", [
    (dict(b1=1.0), "b1"), (dict(b2=-0.1), "b2"), (dict(eps=-1.0), "eps"),
    (dict(extrapolation_rate=-1.0), "extrapolation_rate"),
])
def test_bad_arguments_are_named(kwargs, name):
  arguments = dict(extrapolation_rate=0.1) | kwargs
  with pytest.raises(ValueError, match=name):
    extrap_optax.extrap_adam(0.1, **arguments)
