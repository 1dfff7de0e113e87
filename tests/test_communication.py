"""Communication policies: synchronous, periodic averaging (post-local SGD), periodic outer steps (DiLoCo).

References: NumPy transcriptions of Douillard et al. (2023), Algorithm 1, and of
the workers' average; the compiled HLO for what a local step communicates.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import extrap_optax
from tests import contract

K = 4
DIM = 3


def _data(seed=0, steps=12):
  """Per step and worker, a least-squares problem: f_k(y) = ½‖A y − b‖²."""
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((steps, K, 5, DIM)).astype(np.float32)
  b = rng.standard_normal((steps, K, 5)).astype(np.float32)
  return a, b


def _grad(a, b, y):
  """∇ of ½‖A y − b‖² at y, per worker (NumPy, float64)."""
  return np.einsum("kij,ki->kj", a, np.einsum("kij,kj->ki", a, y) - b)


def _run(tx, steps, workers, seed=0):
  """Per step, the stacked params and the model `evaluation_params` gives
  inside the mapped step; gradients from NumPy at each worker's params."""
  a, b = _data(seed, steps)
  y0 = np.linspace(-1.0, 1.0, DIM).astype(np.float32)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return params, state, extrap_optax.evaluation_params(params, state)

  run = workers.map(step)
  params = workers.replicate(jnp.asarray(y0))
  state = workers.map(tx.init)(params)
  history = []
  for t in range(steps):
    grads = _grad(a[t], b[t], np.asarray(params, np.float64)).astype(np.float32)
    params, state, model = run(params, state, workers.put(grads))
    history.append((np.asarray(params), np.asarray(model), state))
  return history


def _numpy_diloco(steps, sync_period, inner_lr, outer_lr, outer_momentum,
                  b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, seed=0):
  """Douillard et al. (2023), Algorithm 1, in NumPy (float64).

  Inner AdamW (optax's: bias-corrected moments, decoupled decay) per worker,
  its state kept across rounds; after H inner steps Δ = θ − mean_k θ_k and
  θ ← OuterOpt(θ, Δ) with Nesterov momentum (optax/PyTorch form: b ← μb + Δ,
  θ ← θ − lr(Δ + μb)); every worker restarts from θ.

  Returns:
    Per step, the workers' models (K, DIM) after the step.
  """
  a, b = _data(seed, steps)
  theta = np.linspace(-1.0, 1.0, DIM)
  workers = np.tile(theta, (K, 1))
  m = np.zeros((K, DIM))
  v = np.zeros((K, DIM))
  outer_buffer = np.zeros(DIM)
  history = []
  for t in range(steps):
    g = _grad(a[t], b[t], workers)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** (t + 1))
    v_hat = v / (1 - b2 ** (t + 1))
    workers = workers - inner_lr * (m_hat / (np.sqrt(v_hat) + eps)
                                    + weight_decay * workers)
    if (t + 1) % sync_period == 0:
      delta = theta - workers.mean(axis=0)
      outer_buffer = outer_momentum * outer_buffer + delta
      theta = theta - outer_lr * (delta + outer_momentum * outer_buffer)
      workers = np.tile(theta, (K, 1))
    history.append(workers.copy())
  return history


@pytest.fixture(scope="module")
def workers():
  return extrap_optax.Workers(K, backend="shard_map")


def test_diloco_follows_douillard_et_al_algorithm_1(workers):
  # Inner AdamW, outer Nesterov (lr 0.7, momentum 0.9), H = 3, three rounds.
  steps, h = 9, 3
  tx = extrap_optax.diloco(0.05, sync_period=h, axis_name=workers.axis_name)
  ours = _run(tx, steps, workers)
  reference = _numpy_diloco(steps, h, inner_lr=0.05, outer_lr=0.7,
                            outer_momentum=0.9)
  for t, ((params, _, _), expected) in enumerate(zip(ours, reference)):
    np.testing.assert_allclose(params, expected, rtol=2e-5, atol=2e-6,
                               err_msg=f"step {t}")
  # The rounds really moved the models apart and the outer step mattered.
  assert np.ptp(reference[h - 2], axis=0).max() > 1e-2
  assert np.ptp(reference[h - 1], axis=0).max() == 0.0


def test_diloco_with_outer_sgd_at_rate_one_is_periodic_averaging(workers):
  base = optax.chain(optax.add_decayed_weights(1e-3),
                     optax.sgd(0.05, momentum=0.9, nesterov=True))
  past = extrap_optax.past_gradient()

  def tx(communication):
    return extrap_optax.extrapolate(base, past, 0.01,
                                    communication=communication)

  outer = _run(tx(extrap_optax.periodic_outer_step(
      workers.axis_name, outer_optimizer=optax.sgd(1.0), sync_period=3,
      start_step=2)), 11, workers)
  averaged = _run(tx(extrap_optax.periodic_averaging(
      workers.axis_name, sync_period=3, start_step=2)), 11, workers)
  # θ − (θ − ȳ) is ȳ up to rounding.
  for (ours, _, _), (expected, _, _) in zip(outer, averaged):
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_post_local_sgd_is_extrapolate_with_periodic_averaging(workers):
  alias = extrap_optax.post_local_sgd(
      0.05, start_step=2, sync_period=3, extrapolation_rate=0.01,
      weight_decay=1e-3, axis_name=workers.axis_name)
  composed = extrap_optax.extrapolate(
      extrap_optax.nesterov_sgd(0.05, weight_decay=1e-3),
      extrap_optax.past_gradient(), 0.01,
      communication=extrap_optax.periodic_averaging(
          workers.axis_name, sync_period=3, start_step=2))
  for (a, _, _), (b, _, _) in zip(_run(alias, 7, workers),
                                  _run(composed, 7, workers)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["averaging", "outer_step"])
def test_evaluation_point_is_the_workers_average_between_rounds(workers, policy):
  if policy == "averaging":
    communication = extrap_optax.periodic_averaging(
        workers.axis_name, sync_period=4, start_step=1)
  else:
    communication = extrap_optax.periodic_outer_step(
        workers.axis_name, sync_period=4, start_step=1,
        outer_optimizer=optax.sgd(0.7, momentum=0.9, nesterov=True))
  tx = extrap_optax.extrapolate(optax.sgd(0.05, momentum=0.9),
                                extrap_optax.past_gradient(), 0.02,
                                communication=communication)
  history = _run(tx, 9, workers)
  for t, (params, model, state) in enumerate(history):
    shared = np.asarray(state.shared_params)   # each worker's y^k
    expected = shared.astype(np.float64).mean(axis=0)
    # Inside the mapped step: one all-reduce, the same on every worker.
    np.testing.assert_allclose(model, np.tile(expected, (K, 1)), rtol=1e-6,
                               atol=1e-7, err_msg=f"step {t}")
    # Outside: Workers averages the stacked rows.
    np.testing.assert_allclose(workers.evaluation_params(params, state),
                               expected, rtol=1e-6, atol=1e-7)
  # Between rounds the workers' models differ (steps 1-3 after t0 = 1) ...
  assert np.ptp(history[2][2].shared_params, axis=0).max() > 1e-3
  # ... and at a round's end they are one model (t = 4: 4 local steps done).
  assert np.ptp(history[4][2].shared_params, axis=0).max() == 0.0


def test_issue_example_evaluates_the_average_not_worker_zero():
  vmap_workers = extrap_optax.Workers(num_workers=4)
  tx = extrap_optax.post_local_sgd(0.5, start_step=0, sync_period=4,
                                   momentum=0.0, axis_name=vmap_workers.axis_name)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return params, state, extrap_optax.evaluation_params(params, state)

  params = vmap_workers.replicate(jnp.zeros(3))
  state = vmap_workers.map(tx.init)(params)
  grads = vmap_workers.put(jnp.arange(12.0).reshape(4, 3))
  params, state, model = vmap_workers.map(step)(params, state, grads)
  expected = -0.5 * np.arange(12.0).reshape(4, 3).mean(axis=0)   # [-2.25, ...]
  np.testing.assert_allclose(model, np.tile(expected, (4, 1)))
  np.testing.assert_allclose(vmap_workers.evaluation_params(params, state),
                             expected)


def test_synchronous_evaluation_point_is_the_shared_point(workers):
  tx = extrap_optax.extrap_sgd(0.05, extrapolation_rate=0.01,
                               axis_name=workers.axis_name)
  for params, model, state in _run(tx, 3, workers):
    np.testing.assert_array_equal(model, state.shared_params)
    assert not extrap_optax.averages_models(state)


def _all_reduces_outside_conditionals(hlo: str) -> tuple[int, int]:
  """(all-reduces outside any conditional's branches, all-reduces anywhere).

  Reads the compiled HLO module: each computation by name, the branch
  computations of every `conditional`, and what they call in turn.
  """
  computations = {}
  for block in re.split(r"\n(?=\S)", hlo):
    match = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", block)
    if match:
      computations[match.group(1)] = block
  calls = {name: set(re.findall(r"(?:calls|branch_computations|"
                                r"true_computation|false_computation|body|"
                                r"condition)=\{?%?([\w.\-]+(?:, %[\w.\-]+)*)",
                                text))
           for name, text in computations.items()}
  calls = {name: {c.strip().lstrip("%") for group in groups
                  for c in group.split(",")}
           for name, groups in calls.items()}
  inside = set()
  frontier = [c.strip().lstrip("%")
              for text in computations.values()
              for group in re.findall(
                  r"(?:branch_computations=\{|true_computation=|"
                  r"false_computation=)([^,}\s]+(?:, [^,}\s]+)*)", text)
              for c in group.split(",")]
  while frontier:
    name = frontier.pop()
    if name in inside:
      continue
    inside.add(name)
    frontier.extend(calls.get(name, ()))
  # A combined all-reduce has a tuple shape: "= (f32[4]{0}, f32[8,4]{1,0}) all-reduce(".
  count = lambda text: len(re.findall(
      r"= (?:\([^)]*\)|\S+) all-reduce(?:-start)?\(", text))
  total = sum(count(text) for text in computations.values())
  outside = sum(count(text) for name, text in computations.items()
                if name not in inside)
  return outside, total


@pytest.mark.parametrize("name", ["synchronous", "post_local", "diloco"])
def test_compiled_local_steps_execute_no_all_reduce(workers, name):
  base = optax.sgd(0.05, momentum=0.9)
  communication = {
      "synchronous": extrap_optax.synchronous(workers.axis_name),
      "post_local": extrap_optax.periodic_averaging(workers.axis_name,
                                                    sync_period=4),
      "diloco": extrap_optax.periodic_outer_step(
          workers.axis_name, sync_period=4,
          outer_optimizer=optax.sgd(0.7, momentum=0.9, nesterov=True)),
  }[name]
  tx = extrap_optax.extrapolate(base, extrap_optax.past_gradient(), 0.01,
                                communication=communication)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = workers.replicate({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  state = workers.map(tx.init)(params)
  grads = jax.tree.map(jnp.ones_like, params)
  hlo = jax.jit(workers.map(step)).lower(params, state, grads).compile().as_text()
  outside, total = _all_reduces_outside_conditionals(hlo)
  if name == "synchronous":
    assert outside >= 1   # the gradient all-reduce, every step
  else:
    # The parameter average exists only inside the round-end conditional.
    assert outside == 0 and total >= 1, (outside, total)


PERTURBATIONS = {
    "past_gradient": extrap_optax.past_gradient(),
    "trust_ratio": extrap_optax.past_gradient("trust_ratio"),
    "filterwise_noise": extrap_optax.filterwise_noise(0),
    "smoothout_noise": extrap_optax.smoothout_noise(0),
    "gradient_noise": extrap_optax.gradient_noise(),
}


@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
@pytest.mark.parametrize("policy", ["synchronous", "averaging", "outer_step"])
def test_every_perturbation_composes_with_every_policy(workers, perturbation,
                                                       policy):
  communication = {
      "synchronous": extrap_optax.synchronous(workers.axis_name),
      "averaging": extrap_optax.periodic_averaging(workers.axis_name,
                                                   sync_period=2),
      "outer_step": extrap_optax.periodic_outer_step(
          workers.axis_name, sync_period=2, outer_optimizer=optax.sgd(1.0)),
  }[policy]
  tx = extrap_optax.extrapolate(optax.sgd(0.05), PERTURBATIONS[perturbation],
                                0.01, communication=communication)
  history = _run(tx, 4, workers)
  for params, model, state in history:
    assert np.all(np.isfinite(params))
    # The worker holds y^k + δ^k; the model is the average of the y^k.
    np.testing.assert_allclose(
        model[0], np.asarray(state.shared_params, np.float64).mean(axis=0),
        rtol=1e-6, atol=1e-7)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="outer_optimizer"):
    extrap_optax.periodic_outer_step("w", outer_optimizer=0.7, sync_period=2)
  with pytest.raises(ValueError, match="sync_period"):
    extrap_optax.periodic_averaging("w", sync_period=0)
  with pytest.raises(ValueError, match="start_step"):
    extrap_optax.periodic_outer_step("w", outer_optimizer=optax.sgd(1.0),
                                     sync_period=2, start_step=-1)
  with pytest.raises(ValueError, match="either `axis_name`"):
    extrap_optax.extrapolate(optax.sgd(0.1), extrap_optax.past_gradient(), 0.1,
                             axis_name="w",
                             communication=extrap_optax.synchronous("w"))
  with pytest.raises(ValueError, match="`communication` must be"):
    extrap_optax.extrapolate(optax.sgd(0.1), extrap_optax.past_gradient(), 0.1,
                             communication="local")
  with pytest.raises(ValueError, match="momentum"):
    extrap_optax.diloco(1e-3, outer_momentum=1.0)


def test_one_worker_policies_communicate_nothing_and_match_the_base():
  # With one worker, averaging is the identity: local steps are the base's.
  params = contract.init_params()
  base = optax.sgd(0.05, momentum=0.9)
  ours = extrap_optax.extrapolate(
      base, extrap_optax.past_gradient(), 0.0,
      communication=extrap_optax.periodic_averaging(None, sync_period=2))
  contract.assert_trees_close(contract.run(ours, params)[-1][0],
                              contract.run(base, params)[-1][0])
