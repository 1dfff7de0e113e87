"""The perturbation sources (extrap_optax/_src/perturbations.py) against NumPy.

The noise definitions of §3.2 and the LARS-scaled past gradient of App. C.1,
evaluated in NumPy, through `noise_extrap_sgd` / `extrapolated_sgd` on K
workers and as plain functions of a `PerturbationContext`.
"""

import functools

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from tests.extrapolation_problems import AXIS
from tests.extrapolation_problems import GAMMA_HAT
from tests.extrapolation_problems import K
from tests.extrapolation_problems import np_trust_ratio
from tests.extrapolation_problems import PARAMS
from tests.extrapolation_problems import stack
from tests.extrapolation_problems import vmapped_step


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
  step = vmapped_step(tx, _quadratic_loss)
  params = stack(params, K)
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
  step = vmapped_step(tx, _quadratic_loss)
  params = stack(params, K)
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
  stacked = stack(params, K)
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
  expected = np_trust_ratio(grads, next_params, weight_decay, decayed)
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
  expected = np_trust_ratio(grads16, next_params, 0.1, {k: True for k in _ALL})
  for name in _ALL:
    assert zeta[name].dtype == jnp.bfloat16, name
    np.testing.assert_allclose(np.asarray(zeta[name], np.float32), expected[name],
                               rtol=1e-2, atol=1e-6, err_msg=name)


def test_unscaled_past_gradient_is_the_local_gradient():
  next_params, grads = _trust_ratio_tree()
  zeta = extrap_optax.past_gradient()(_context(grads, next_params))
  assert zeta is grads


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
    source(_context(PARAMS, PARAMS))
