"""The optax-style contract that every transformation of extrap_optax must keep.

Each check takes a transformation `factory` and a dict `hp` of its
hyperparameters and builds the transformation as `factory(**hp)` (for one
worker, `axis_name=None`). The checks compare against independent references:
the same transformation run without the wrapper under test (jit, MultiSteps,
clipping, a checkpoint), or NumPy.

The problem: a tiny tanh regression whose data change with the step t, so that
the gradient depends on both the parameters and the step.
"""

import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import extrap_optax

NUM_STEPS = 4
_RNG = np.random.default_rng(0)
_INPUTS = _RNG.normal(size=(2 * NUM_STEPS, 6, 4)).astype(np.float32)
_TARGETS = 3.0 * _RNG.normal(size=(2 * NUM_STEPS, 6, 3)).astype(np.float32)
_PARAMS = {
    "w": _RNG.normal(size=(4, 3)).astype(np.float32),
    "b": _RNG.normal(size=(3,)).astype(np.float32),
}


def init_params(dtype=jnp.float32):
  return jax.tree.map(lambda p: jnp.asarray(p, dtype), _PARAMS)


def loss(params, t):
  """The loss on the batch of step t (t may be traced)."""
  inputs = jnp.asarray(_INPUTS)[t].astype(params["w"].dtype)
  targets = jnp.asarray(_TARGETS)[t].astype(params["w"].dtype)
  predictions = jnp.tanh(inputs @ params["w"] + params["b"])
  return 2.0 * jnp.mean(jnp.square(predictions - targets))


grad_fn = jax.jit(jax.grad(loss))


def make_step(tx):
  """One training step of `tx` on the batch of step t."""

  def step(params, state, t):
    updates, state = tx.update(grad_fn(params, t), state, params)
    return optax.apply_updates(params, updates), state, updates

  return step


def run(tx, params, num_steps=NUM_STEPS, state=None, first_step=0, step=None):
  """`num_steps` jitted steps; returns the (params, state) after each step."""
  step = jax.jit(make_step(tx)) if step is None else step
  state = tx.init(params) if state is None else state
  trajectory = []
  for t in range(first_step, first_step + num_steps):
    params, state, _ = step(params, state, t)
    trajectory.append((params, state))
  return trajectory


def assert_trees_close(actual, expected, rtol=1e-5, err_msg=""):
  """Leaf by leaf, max|a − e| ≤ rtol · max|e|: one computation, rounded twice.

  For programs that compute the same float operations but that XLA may fuse,
  reorder or contract into multiply-adds differently (jit against op by op,
  two transformations that agree in exact arithmetic). The bound is relative
  to each tensor's scale, not to each element: an element near zero inherits
  rounding errors of the size of the operands it came from, and how many of
  those there are depends on the CPU that XLA compiled for (an elementwise
  tolerance passed on one x86 machine and failed on another). A real
  difference between the two computations is of the size of a step, orders
  of magnitude above `rtol`.
  """
  assert jax.tree.structure(actual) == jax.tree.structure(expected)

  def check(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    scale = np.max(np.abs(e), initial=0.0)
    error = np.max(np.abs(a - e), initial=0.0)
    assert error <= rtol * scale, (
        f"{err_msg}: max |actual − expected| = {error:.3g} exceeds "
        f"{rtol:g} × max |expected| = {rtol * scale:.3g}\n"
        f"actual:   {a.ravel()[:8]}\nexpected: {e.ravel()[:8]}")

  jax.tree.map(check, actual, expected)


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def injectable(factory, hp):
  """`factory` with the keyword-only signature (*, <names in hp>).

  `optax.inject_hyperparams` reads the factory's signature: a `lambda **hp`
  would be bound as one argument named `hp`.
  """

  def wrapped(**kwargs):
    return factory(**kwargs)

  wrapped.__signature__ = inspect.Signature(
      [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in hp])
  return wrapped


@contextlib.contextmanager
def count_compilations():
  """Collects one entry per program compiled inside the `with` block.

  Built on `jax.monitoring`'s public events: a program lowered for XLA (a
  miss of jit's in-memory cache) fires one, whether XLA then compiles it or
  loads it from the persistent compilation cache the test suite uses.
  """
  compilations = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      compilations.append(kwargs.get("fun_name", ""))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compilations
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def check_jit_no_retrace(factory, hp):
  """A jitted step is traced and compiled once, not again on later steps."""
  tx = factory(**hp)
  traces = []

  def counted_step(params, state, t):
    traces.append(t)
    return make_step(tx)(params, state, t)

  step = jax.jit(counted_step)
  params = init_params()
  state = tx.init(params)
  for t in range(NUM_STEPS):
    params, state, _ = step(params, state, t)
  assert len(traces) == 1, f"traced {len(traces)} times over {NUM_STEPS} steps"
  with count_compilations() as compilations:
    step(params, state, NUM_STEPS)
  assert compilations == [], "a later step compiled again"


def check_inject_hyperparams(factory, hp):
  """`optax.inject_hyperparams(factory)(**hp)` follows `factory(**hp)`."""
  injected = optax.inject_hyperparams(injectable(factory, hp))(**hp)
  expected = run(factory(**hp), init_params())
  actual = run(injected, init_params())
  for (params, state), (ref_params, ref_state) in zip(actual, expected):
    assert sorted(state.hyperparams) == sorted(hp)
    assert_trees_close(params, ref_params)
    assert_trees_close(
        extrap_optax.evaluation_params(params, state),
        extrap_optax.evaluation_params(ref_params, ref_state))


def check_bfloat16(factory, hp):
  """bfloat16 params give bfloat16 updates, params and parameter-like state."""
  tx = factory(**hp)
  step = jax.jit(make_step(tx))
  params = init_params(jnp.bfloat16)
  state = tx.init(params)
  for t in range(NUM_STEPS):
    params, state, updates = step(params, state, t)
    for leaf in jax.tree.leaves((params, updates)):
      assert leaf.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(state):
      if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim >= 1:
        assert leaf.dtype == jnp.bfloat16, f"state leaf {leaf.shape} is {leaf.dtype}"
  assert all(np.all(np.isfinite(np.asarray(p, np.float32)))
             for p in jax.tree.leaves(params))


def check_multi_steps(factory, hp):
  """MultiSteps(k=2) over 2n mini-steps equals n steps on the pairs' mean gradients."""
  tx = optax.MultiSteps(factory(**hp), every_k_schedule=2)
  params = init_params()
  state = tx.init(params)
  ref_tx = factory(**hp)
  ref_params = init_params()
  ref_state = ref_tx.init(ref_params)
  update = jax.jit(tx.update)
  ref_update = jax.jit(ref_tx.update)
  for t in range(2 * NUM_STEPS):
    updates, state = update(grad_fn(params, t), state, params)
    params = optax.apply_updates(params, updates)
    if t % 2 == 1:
      pair_mean = jax.tree.map(
          lambda a, b: (a + b) / 2, grad_fn(ref_params, t - 1), grad_fn(ref_params, t))
      ref_updates, ref_state = ref_update(pair_mean, ref_state, ref_params)
      ref_params = optax.apply_updates(ref_params, ref_updates)
    # MultiSteps accumulates a running mean, acc + (g − acc)/k, which rounds
    # differently from (a + b)/2; divisions by small norms (LARC, the printed
    # EXTRAP-ADAM formula) amplify that to ~1e-5 relative.
    assert_trees_close(params, ref_params, rtol=2e-5)
    assert_trees_close(
        extrap_optax.evaluation_params(params, state),
        extrap_optax.evaluation_params(ref_params, ref_state), rtol=2e-5)


def check_after_clipping(factory, hp):
  """chain(clip_by_global_norm(1), tx) equals tx fed gradients clipped in NumPy."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), factory(**hp))
  ref_tx = factory(**hp)
  params = init_params()
  ref_params = init_params()
  state = tx.init(params)
  ref_state = ref_tx.init(ref_params)
  update = jax.jit(tx.update)
  ref_update = jax.jit(ref_tx.update)
  norms = []
  for t in range(NUM_STEPS):
    updates, state = update(grad_fn(params, t), state, params)
    params = optax.apply_updates(params, updates)
    grads = jax.tree.map(lambda g: np.asarray(g, np.float64), grad_fn(ref_params, t))
    norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grads)))
    norms.append(norm)
    clipped = jax.tree.map(lambda g: (g / max(norm, 1.0)).astype(np.float32), grads)
    ref_updates, ref_state = ref_update(clipped, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, ref_updates)
    assert_trees_close(params, ref_params)
  assert max(norms) > 1.0, "the problem must make the clipping act"


def check_checkpoint_round_trip(factory, hp, directory):
  """The state survives an orbax checkpoint; resuming equals never stopping."""
  tx = factory(**hp)
  step = jax.jit(make_step(tx))
  uninterrupted = run(tx, init_params(), step=step)
  params, state = uninterrupted[1]
  tree = {"params": params, "opt_state": state}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "checkpoint", tree)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(
        directory / "checkpoint", jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
  assert_trees_equal(restored, tree)
  resumed = run(tx, restored["params"], num_steps=NUM_STEPS - 2,
                state=restored["opt_state"], first_step=2, step=step)
  for got, expected in zip(resumed, uninterrupted[2:]):
    assert_trees_equal(got, expected)


# The checks below port optax's shared optimizer tests (optax 0.2.8:
# optax/contrib/_common_test.py, optax/_src/sharding_test.py). Each takes an
# optional `workers` (`extrap_optax.Workers`): then the transformation is built
# with `axis_name=workers.axis_name` and every step runs on K workers through
# `workers.map`, each worker on its own batch.


def build(factory, hp, workers=None):
  """`factory(**hp)` for one worker, or for the K workers of `workers`."""
  if workers is None:
    return factory(**hp)
  return factory(axis_name=workers.axis_name, **hp)


def _per_worker(fn, workers, in_axes=0):
  """`fn` jitted for one worker, or run on every worker of `workers`."""
  return jax.jit(fn) if workers is None else workers.map(fn, in_axes=in_axes)


def _start(workers, dtype=jnp.float32):
  """The initial params, and the step's batch index per worker."""
  params = init_params(dtype)
  if workers is None:
    return params, lambda t: t
  ranks = np.arange(workers.num_workers)
  return (workers.replicate(params),
          lambda t: workers.put((t * workers.num_workers + ranks) % len(_INPUTS)))


def check_extra_args(factory, hp, workers=None):
  """`update` takes keyword arguments it does not use, and a later call does not compile.

  optax's `test_optimizers_accept_extra_args`: optimizers are
  `GradientTransformationExtraArgs`, so they can sit in a chain with
  transformations that need extra arguments (e.g. `value=`).
  """
  tx = build(factory, hp, workers)

  def step(params, state, t):
    grads = grad_fn(params, t)
    updates, state = tx.update(
        grads, state, params, unexpected_extra_args_your_optimizer_doesnt_expect=1)
    return optax.apply_updates(params, updates), state

  step = _per_worker(step, workers)
  params, batch = _start(workers)
  state = _per_worker(tx.init, workers)(params)
  for t in range(2):
    params, state = step(params, state, batch(t))
  with count_compilations() as compilations:
    step(params, state, batch(2))
  assert compilations == [], "update compiled again on a later call"


def _first_updates(tx, dtype, workers):
  """(params, the updates of `tx`'s first step from them), per worker if K."""
  params, batch = _start(workers, dtype)
  state = _per_worker(tx.init, workers)(params)

  def update(params, state, t):
    return tx.update(grad_fn(params, t), state, params)[0]

  return params, _per_worker(update, workers)(params, state, batch(0))


def check_preserve_dtype(factory, hp, dtype, workers=None):
  """Updates have the dtype of the parameters (optax's `test_preserve_dtype`)."""
  params, updates = _first_updates(build(factory, hp, workers), dtype, workers)
  for leaf, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert leaf.dtype == param.dtype, f"{dtype} params got {leaf.dtype} updates"


def check_gradient_accumulation(factory, hp, dtype, workers=None):
  """Inside `optax.MultiSteps(k=4)` the first update is exactly zero, in the params' dtype.

  optax's `test_gradient_accumulation` (it catches, e.g., a state whose dtype
  changes between the mini-steps, which `MultiSteps`' `lax.cond` rejects).
  """
  tx = optax.MultiSteps(build(factory, hp, workers), every_k_schedule=4)
  params, updates = _first_updates(tx, dtype, workers)
  for leaf, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert leaf.dtype == param.dtype
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)


def check_cond_stability(factory, hp, dtype, workers=None):
  """The state keeps its shapes and dtypes through `lax.cond` and `jit`.

  optax's `test_state_shape_dtype_shard_stability`: both branches of a
  `lax.cond` (an update, or no update) must have the same types, so a state
  leaf whose dtype, weak type or shape changes on `update` fails to trace.
  """
  with jax.enable_x64(dtype == jnp.float64):
    tx = build(factory, hp, workers)
    params, batch = _start(workers, dtype)
    state = _per_worker(tx.init, workers)(params)

    def step(params, state, t):
      grads = grad_fn(params, t)
      take = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
          take, lambda: tx.update(grads, state, params), lambda: (params, state))
      return optax.apply_updates(params, updates), state

    def keep_either(state, new_state):
      take = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      return jax.lax.cond(take, lambda: state, lambda: new_state)

    step = _per_worker(step, workers)
    keep_either = _per_worker(keep_either, workers)
    for t in range(2):
      params, new_state = step(params, state, batch(t))
      assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
      state = keep_either(state, new_state)


def check_learning_rate_schedule(factory, hp):
  """A constant schedule trains exactly like the constant it returns.

  optax's `test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such`,
  for every rate hyperparameter (γ, and γ̂ where there is one).
  """
  rates = [name for name in ("learning_rate", "extrapolation_rate") if name in hp]
  assert rates, "the transformation has no rate to schedule"
  scheduled = {**hp, **{name: optax.constant_schedule(hp[name]) for name in rates}}
  expected = run(factory(**hp), init_params())
  actual = run(factory(**scheduled), init_params())
  for (params, state), (ref_params, ref_state) in zip(actual, expected):
    assert_trees_close(params, ref_params)
    assert_trees_close(extrap_optax.evaluation_params(params, state),
                       extrap_optax.evaluation_params(ref_params, ref_state))


def check_map_params(factory, hp):
  """`optax.tree.map_params` reaches the parameter-shaped leaves of the state.

  optax's `test_optimizers` applies it as a no-op; here it also changes the
  parameter-shaped leaves (to ShapeDtypeStructs) and nothing else.
  """
  tx = factory(**hp)
  params = init_params()
  state = run(tx, params, num_steps=2)[-1][1]
  assert_trees_equal(optax.tree.map_params(tx, lambda v: v, state), state)
  abstract = optax.tree.map_params(tx, ocp.utils.to_shape_dtype_struct, state)
  param_shapes = {p.shape for p in jax.tree.leaves(params)}
  for leaf, original in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    if isinstance(leaf, jax.ShapeDtypeStruct):
      assert leaf.shape in param_shapes and leaf.dtype == original.dtype
    else:
      assert leaf is original


def check_abstract_init(factory, hp, workers=None):
  """`init` takes `jax.ShapeDtypeStruct`s, and `jax.eval_shape` of it matches `init`.

  optax's `test_init_with_abstract_input` (shapes known, no arrays yet: the
  way a sharded or checkpoint-restored state is built).
  """
  tx = build(factory, hp, workers)
  params = jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32)
  concrete = jnp.zeros((2, 4, 8), jnp.float32)
  if workers is None:
    abstract_state = tx.init(params)
    shapes = jax.eval_shape(tx.init, params)
    expected = tx.init(concrete)
    assert (jax.tree.map(lambda x: (x.shape, x.dtype), abstract_state)
            == jax.tree.map(lambda x: (x.shape, x.dtype), expected))
  else:
    init = workers.map(tx.init)
    stacked = jax.ShapeDtypeStruct((workers.num_workers, 2, 4, 8), jnp.float32)
    shapes = jax.eval_shape(init, stacked)
    expected = init(workers.replicate(concrete))
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), shapes)
          == jax.tree.map(lambda x: (x.shape, x.dtype), expected))


def _explicit_mesh_params():
  """optax's sharding-test parameters: float16 (2, 8, 4), sharded P(None, 'x')."""
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
  return mesh, sharding


def _explicit_mesh_transformation(factory, hp, stacked):
  """`factory(**hp)`, or its K=8 workers stacked over the mesh axis (global view).

  With `stacked`, the transformation is `extrap_optax.over_stacked_workers`
  of the per-worker one, and the parameters carry a leading worker axis
  sharded over the mesh: (8, 8, 4), P('x').
  """
  mesh, sharding = _explicit_mesh_params()
  if not stacked:
    return factory(**hp), mesh, (2, 8, 4), sharding
  tx = extrap_optax.over_stacked_workers(
      factory(axis_name="workers", **hp), axis_name="workers")
  return tx, mesh, (8, 8, 4), jax.sharding.NamedSharding(mesh, jax.P("x"))


def check_sharding_type_init_matches_update(factory, hp, stacked=False):
  """Under an explicit mesh, `update` returns a state of the types `init` gave.

  optax's `test_state_sharding_type_init_match_update`: the types
  (`jax.typeof`: shape, dtype and sharding) of every state leaf.
  """
  tx, mesh, shape, sharding = _explicit_mesh_transformation(factory, hp, stacked)
  with jax.set_mesh(mesh):
    params = jnp.zeros(shape, dtype=jnp.float16, out_sharding=sharding)
    state0 = tx.init(params)
    _, state1 = tx.update(params, state0, params)
    assert (jax.tree.map(jax.typeof, state0) == jax.tree.map(jax.typeof, state1))


def check_sharding_type_preserved_with_jit(factory, hp, stacked=False):
  """Under an explicit mesh, jitted `init`/`update` give the eager ones' types.

  optax's `test_state_sharding_type_preserved_with_jit`.
  """
  tx, mesh, shape, sharding = _explicit_mesh_transformation(factory, hp, stacked)
  with jax.set_mesh(mesh):
    params = jnp.zeros(shape, dtype=jnp.float16, out_sharding=sharding)
    state0 = tx.init(params)
    state1 = jax.jit(tx.init)(params)
    assert jax.tree.map(jax.typeof, state0) == jax.tree.map(jax.typeof, state1)
    _, state2 = tx.update(params, state0, params)
    _, state3 = jax.jit(tx.update)(params, state0, params)
    assert jax.tree.map(jax.typeof, state2) == jax.tree.map(jax.typeof, state3)
