"""smoothness_probe against closed forms and a NumPy re-implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from extrap_optax._src import smoothness

SHAPES = {"a": (3,), "b": (2, 2)}
DIM = 7


def _unflatten(x):
  return {"a": x[:3], "b": x[3:].reshape(2, 2)}


def _flatten(tree):
  return jnp.concatenate([tree["a"], tree["b"].ravel()])


def _quadratic(seed=0):
  """A = Q diag(eigs) Qᵀ, symmetric PSD with a random eigenbasis."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
  eigs = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0])
  a = q @ np.diag(eigs) @ q.T
  a_jax = jnp.asarray(a, jnp.float32)
  grad_fn = lambda p: _unflatten(a_jax @ _flatten(p))
  return a, q, eigs, grad_fn, rng


def test_quadratic_gives_curvature_along_update():
  a, _, _, grad_fn, rng = _quadratic()
  y, delta = rng.normal(size=DIM), rng.normal(size=DIM)
  probe = jax.jit(smoothness.smoothness_probe, static_argnums=0)
  actual = probe(grad_fn, _unflatten(jnp.asarray(y, jnp.float32)),
                 _unflatten(jnp.asarray(delta, jnp.float32)))
  expected = np.linalg.norm(a @ delta) / np.linalg.norm(delta)
  np.testing.assert_allclose(actual, expected, rtol=1e-4)
  assert actual.shape == () and actual.dtype == jnp.float32


@pytest.mark.parametrize("index", [1, 4, 6])
def test_eigenvector_gives_eigenvalue(index):
  _, q, eigs, grad_fn, rng = _quadratic(seed=1)
  y = _unflatten(jnp.asarray(rng.normal(size=DIM), jnp.float32))
  delta = _unflatten(jnp.asarray(-0.2 * q[:, index], jnp.float32))
  np.testing.assert_allclose(
      smoothness.smoothness_probe(grad_fn, y, delta), eigs[index], rtol=1e-4,
      atol=1e-5)


def _numpy_probe(grad, y, delta, num_steps, step_fraction):
  g0 = grad(y)
  return max(
      np.linalg.norm(grad(y + step_fraction * j * delta) - g0)
      / np.linalg.norm(step_fraction * j * delta)
      for j in range(1, num_steps + 1))


@pytest.mark.parametrize("num_steps, step_fraction, batch_size", [
    (8, 0.3, None), (3, 0.5, None), (8, 0.3, 4), (8, 0.3, 1)])
def test_quartic_matches_numpy(num_steps, step_fraction, batch_size):
  # f(x) = Σ x⁴ along a direction where the ratio first falls, then rises: the
  # max is the last ratio, not the first.
  rng = np.random.default_rng(4)
  y, delta = rng.normal(size=DIM), rng.normal(size=DIM)
  grad_fn = jax.grad(lambda p: sum(jnp.sum(x ** 4) for x in jax.tree.leaves(p)))
  actual = smoothness.smoothness_probe(
      grad_fn, _unflatten(jnp.asarray(y, jnp.float32)),
      _unflatten(jnp.asarray(delta, jnp.float32)), num_steps=num_steps,
      step_fraction=step_fraction, batch_size=batch_size)
  expected = _numpy_probe(lambda x: 4 * x ** 3, y, delta, num_steps,
                          step_fraction)
  first = _numpy_probe(lambda x: 4 * x ** 3, y, delta, 1, step_fraction)
  assert expected > 1.5 * first
  np.testing.assert_allclose(actual, expected, rtol=1e-4)


def test_zero_update_returns_zero():
  _, _, _, grad_fn, rng = _quadratic()
  y = _unflatten(jnp.asarray(rng.normal(size=DIM), jnp.float32))
  zero = jax.tree.map(jnp.zeros_like, y)
  with jax.debug_nans(True):
    assert float(smoothness.smoothness_probe(grad_fn, y, zero)) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_steps=0), "num_steps"),
    (dict(step_fraction=0.0), "step_fraction"),
])
def test_validation(kwargs, match):
  y = {"a": jnp.ones(2)}
  with pytest.raises(ValueError, match=match):
    smoothness.smoothness_probe(lambda p: p, y, y, **kwargs)
