"""The counter-based generator of the noise perturbations, against SciPy's distributions."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import extrap_optax
from extrap_optax._src import perturbations


def _context(worker, step, params):
  return extrap_optax.PerturbationContext(
      local_grads=None, mean_grads=None, params=None, next_params=params,
      base_state=None, next_base_state=None, next_count=step,
      worker_index=worker)


@pytest.mark.parametrize("sample, cdf", [
    (perturbations._counter_hash_uniform, scipy.stats.uniform(-1, 2).cdf),
    (perturbations._counter_hash_normal, scipy.stats.norm().cdf),
])
def test_counter_hash_draws_follow_their_distribution(sample, cdf):
  for seed in range(3):
    word = perturbations._counter_hash_word(seed, 1, 0, 0)
    draws = np.asarray(sample(word, (200_000,), jnp.float32), np.float64)
    # Fixed draws: a deterministic test; a broken generator gives p ~ 0.
    assert scipy.stats.kstest(draws, cdf).pvalue > 1e-3


def test_counter_hash_streams_are_independent_per_worker_step_and_tensor():
  params = {"a": jnp.ones((300, 400)), "b": jnp.ones((300, 400))}
  source = extrap_optax.filterwise_noise(7, generator="counter_hash")
  base = source(_context(0, 1, params))
  others = [source(_context(1, 1, params))["a"], source(_context(0, 2, params))["a"],
            base["b"]]
  for other in others:
    r = np.corrcoef(np.ravel(base["a"]), np.ravel(other))[0, 1]
    assert abs(r) < 0.01, r   # 120,000 pairs: |r| of independent draws ~ 0.003
  # Every filter has the norm of the parameter's filter (‖1‖ over 300 rows).
  np.testing.assert_allclose(np.linalg.norm(base["a"], axis=0), np.sqrt(300),
                             rtol=1e-5)


def test_counter_hash_smoothout_is_one_draw_for_all_workers():
  params = {"w": jnp.ones((20, 30))}
  source = extrap_optax.smoothout_noise(2, generator="counter_hash")
  np.testing.assert_array_equal(source(_context(0, 3, params))["w"],
                                source(_context(5, 3, params))["w"])


def test_generator_is_validated():
  with pytest.raises(ValueError, match="generator"):
    extrap_optax.filterwise_noise(0, generator="philox")
  with pytest.raises(ValueError, match="generator"):
    extrap_optax.noise_extrap_sgd(0.1, extrapolation_rate=0.01,
                                  generator="mt19937")
