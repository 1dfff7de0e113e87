"""Shared problems and references of the library's optimizer tests.

K workers under `jax.vmap` (axis `AXIS`), a quadratic problem, and the NumPy
reference of the LARS-scaled past gradient (App. C.1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

AXIS = "workers"
K = 4
GAMMA_HAT = 0.05
TRUST_WEIGHT_DECAY = 1e-2
PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}


def stack(tree, num_workers):
  return jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * num_workers), tree)


def vmapped_step(tx, loss, jit=True):
  """A step of K workers under vmap; the data are stacked per worker."""

  def step(params, state, data):
    grads = jax.grad(loss)(params, *data)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  vmapped = jax.vmap(step, axis_name=AXIS)
  return jax.jit(vmapped) if jit else vmapped


def np_trust_ratio(grads, params, weight_decay, decayed, eps=1e-8):
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


def trust_ratio_problem(seed=5):
  """Per-worker quadratics ½‖c_k ⊙ p − d_k‖² over a conv kernel, a matrix and a
  bias, and a matrix that the loss ignores (zero gradient), in float64."""
  rng = np.random.default_rng(seed)
  shapes = {"conv": (2, 2, 3, 4), "dense": (5, 3), "bias": (3,)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  params["unused"] = rng.normal(size=(2, 2))
  coefficients = {k: rng.uniform(0.5, 1.5, size=(K,) + s) for k, s in shapes.items()}
  offsets = {k: rng.normal(size=(K,) + s) for k, s in shapes.items()}
  return params, coefficients, offsets


def trust_ratio_loss(params, coefficients, offsets):
  return sum(0.5 * jnp.sum(jnp.square(coefficients[k] * params[k] - offsets[k]))
             for k in coefficients)
