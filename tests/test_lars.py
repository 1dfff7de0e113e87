"""scale_by_larc / larc_sgd against independent re-statements of apex LARC."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from extrap_optax._src import lars

NUM_STEPS = 6
TRUST = 0.02
WD = 1e-2


def _lr_schedule(count):
  # Grows 0.05 -> 0.3 so that the clip of the "mid" tensor switches on the way.
  return 0.05 + 0.05 * count


def _problem(seed=0):
  """Params and a gradient sequence covering every LARC branch.

  w:      ordinary kernel, ratio/lr < 1 (LARC scaling active).
  big:    large weights, tiny gradients: ratio/lr > 1 (clip to factor 1).
  mid:    ratio/lr crosses 1 as the learning rate grows.
  zero_w: all-zero kernel: ||w|| = 0 on the first step (no scaling, no decay).
  zero_g: gradient always zero: no scaling and no weight decay, never moves.
  b:      a bias (ndim 1): not decayed under the default mask.
  """
  rng = np.random.default_rng(seed)
  params = {
      "w": rng.normal(size=(4, 3)),
      "big": 10.0 * rng.normal(size=(3, 3)),
      "mid": rng.normal(size=(2, 3)),
      "zero_w": np.zeros((3, 2)),
      "zero_g": rng.normal(size=(2, 2)),
      "b": rng.normal(size=(5,)),
  }
  grads = []
  for _ in range(NUM_STEPS):
    g = {k: rng.normal(size=v.shape) for k, v in params.items()}
    g["big"] *= 1e-3
    g["mid"] *= 0.15
    g["zero_g"] = np.zeros_like(params["zero_g"])
    grads.append(g)
  params = {k: v.astype(np.float32) for k, v in params.items()}
  grads = [{k: v.astype(np.float32) for k, v in g.items()} for g in grads]
  return params, grads


def _numpy_larc_sgd(params, grads_seq, lr_fn, *, decay, larc, clip=True,
                    momentum=0.9, nesterov=True, clip_lr_fn=None):
  """apex LARC(torch.optim.SGD) re-stated in float64 NumPy.

  `clip_lr_fn` (default `lr_fn`) is the learning rate the clip divides by.
  Returns the final params and the set of (tensor, branch) taken: "scaled"
  (clip inactive), "clipped" (factor 1), "zero" (zero norm, untouched).
  """
  clip_lr_fn = clip_lr_fn or lr_fn
  params = {k: v.astype(np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  branches = set()
  for t, grads in enumerate(grads_seq):
    lr = lr_fn(t)
    for k in params:
      w, g = params[k], grads[k].astype(np.float64)
      lam = WD if decay[k] else 0.0
      if not larc[k]:
        d = g + lam * w
      elif np.linalg.norm(w) != 0 and np.linalg.norm(g) != 0:
        r = TRUST * np.linalg.norm(w) / (
            np.linalg.norm(g) + np.linalg.norm(w) * lam + 1e-8)
        if clip:
          clip_lr = clip_lr_fn(t)
          branches.add((k, "clipped" if r / clip_lr >= 1 else "scaled"))
          r = min(r / clip_lr, 1.0)
        d = (g + lam * w) * r
      else:
        branches.add((k, "zero"))
        d = g
      buf[k] = momentum * buf[k] + d
      params[k] = w - lr * (d + momentum * buf[k] if nesterov else buf[k])
  return params, branches


def _run_optax(opt, params, grads_seq, jit=True):
  params = jax.tree.map(jnp.asarray, params)
  state = opt.init(params)
  update = jax.jit(opt.update) if jit else opt.update
  for grads in grads_seq:
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_close(actual, expected):
  for k in expected:
    np.testing.assert_allclose(
        np.asarray(actual[k]), expected[k], rtol=2e-5, atol=1e-6, err_msg=k)


def _ndim_mask(params):
  return {k: v.ndim >= 2 for k, v in params.items()}


@pytest.mark.parametrize("schedule", [False, True], ids=["const_lr", "sched_lr"])
def test_larc_sgd_matches_numpy(schedule):
  params, grads = _problem()
  lr = _lr_schedule if schedule else 0.1
  lr_fn = _lr_schedule if schedule else (lambda t: 0.1)
  opt = lars.larc_sgd(lr, trust_coefficient=TRUST, weight_decay=WD)
  actual, state = _run_optax(opt, params, grads)
  expected, branches = _numpy_larc_sgd(
      params, grads, lr_fn, decay=_ndim_mask(params),
      larc={k: True for k in params})
  _assert_close(actual, expected)
  assert {("w", "scaled"), ("big", "clipped"), ("zero_w", "zero"),
          ("zero_g", "zero")} <= branches
  # The zero-gradient tensor got neither weight decay nor a step.
  np.testing.assert_array_equal(actual["zero_g"], params["zero_g"])
  assert int(state[0].count) == NUM_STEPS


def test_clip_uses_the_learning_rate_of_the_step():
  # "mid" is clipped early and scaled late as the learning rate grows; a clip
  # with the next step's learning rate would give different parameters.
  params, grads = _problem()
  actual, _ = _run_optax(
      lars.larc_sgd(_lr_schedule, trust_coefficient=TRUST, weight_decay=WD),
      params, grads)
  kwargs = dict(decay=_ndim_mask(params), larc={k: True for k in params})
  expected, branches = _numpy_larc_sgd(params, grads, _lr_schedule, **kwargs)
  assert {("mid", "clipped"), ("mid", "scaled")} <= branches
  shifted, _ = _numpy_larc_sgd(params, grads, _lr_schedule,
                               clip_lr_fn=lambda t: _lr_schedule(t + 1),
                               **kwargs)
  _assert_close(actual, expected)
  assert not np.allclose(actual["mid"], shifted["mid"], rtol=1e-3)


def test_mask_and_no_clip_match_numpy():
  params, grads = _problem(seed=1)
  larc_mask = {k: k not in ("w", "b") for k in params}
  decay_mask = {k: k != "mid" for k in params}
  for clip in (True, False):
    opt = lars.larc_sgd(
        _lr_schedule, trust_coefficient=TRUST, weight_decay=WD,
        weight_decay_mask=decay_mask, mask=lambda p: larc_mask, clip=clip)
    actual, _ = _run_optax(opt, params, grads)
    expected, _ = _numpy_larc_sgd(
        params, grads, _lr_schedule, decay=decay_mask, larc=larc_mask,
        clip=clip)
    _assert_close(actual, expected)


def test_bool_masks():
  params, grads = _problem(seed=4)
  everything = {k: True for k in params}
  actual, _ = _run_optax(
      lars.larc_sgd(0.1, trust_coefficient=TRUST, weight_decay=WD,
                    weight_decay_mask=True), params, grads)
  expected, _ = _numpy_larc_sgd(
      params, grads, lambda t: 0.1, decay=everything, larc=everything)
  _assert_close(actual, expected)
  # mask=False: no LARC anywhere, i.e. plain SGD with coupled weight decay.
  actual, _ = _run_optax(
      lars.larc_sgd(0.1, weight_decay=WD, weight_decay_mask=True, mask=False),
      params, grads)
  expected, _ = _run_optax(
      optax.chain(optax.add_decayed_weights(WD),
                  optax.sgd(0.1, momentum=0.9, nesterov=True)), params, grads)
  _assert_close(actual, jax.tree.map(np.asarray, expected))


def test_scale_by_larc_single_step_closed_form():
  w = jnp.array([[3.0, 4.0]])  # ||w|| = 5
  g = jnp.array([[0.0, 2.0]])  # ||g|| = 2
  tx = lars.scale_by_larc(0.5, trust_coefficient=0.1, weight_decay=0.2)
  d, _ = tx.update(g, tx.init(w), w)
  ratio = 0.1 * 5.0 / (2.0 + 5.0 * 0.2 + 1e-8)
  np.testing.assert_allclose(
      d, (np.asarray(g) + 0.2 * np.asarray(w)) * min(ratio / 0.5, 1.0),
      rtol=1e-6)


def test_larc_sgd_matches_torch_apex_larc():
  torch = pytest.importorskip(
      "torch", reason="torch is the optional reference for apex LARC")

  class ApexLarc:
    """apex/parallel/LARC.py's step, re-stated around a torch optimizer."""

    def __init__(self, optimizer, trust_coefficient, clip=True, eps=1e-8):
      self.optim = optimizer
      self.trust_coefficient = trust_coefficient
      self.clip = clip
      self.eps = eps

    @torch.no_grad()
    def step(self):
      weight_decays = []
      for group in self.optim.param_groups:
        weight_decay = group.get("weight_decay", 0)
        weight_decays.append(weight_decay)
        group["weight_decay"] = 0
        for p in group["params"]:
          param_norm = torch.norm(p.data)
          grad_norm = torch.norm(p.grad.data)
          if param_norm != 0 and grad_norm != 0:
            adaptive_lr = self.trust_coefficient * param_norm / (
                grad_norm + param_norm * weight_decay + self.eps)
            if self.clip:
              adaptive_lr = min(adaptive_lr / group["lr"], 1)
            p.grad.data += weight_decay * p.data
            p.grad.data *= adaptive_lr
      self.optim.step()
      for group, weight_decay in zip(self.optim.param_groups, weight_decays):
        group["weight_decay"] = weight_decay

  params, grads = _problem(seed=2)
  tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  decay = _ndim_mask(params)
  sgd = torch.optim.SGD(
      [{"params": [tparams[k] for k in params if decay[k]], "weight_decay": WD},
       {"params": [tparams[k] for k in params if not decay[k]],
        "weight_decay": 0.0}],
      lr=_lr_schedule(0), momentum=0.9, nesterov=True)
  larc = ApexLarc(sgd, trust_coefficient=TRUST)
  for t, g in enumerate(grads):
    for group in sgd.param_groups:
      group["lr"] = _lr_schedule(t)
    for k, p in tparams.items():
      p.grad = torch.tensor(g[k])
    larc.step()

  actual, _ = _run_optax(
      lars.larc_sgd(_lr_schedule, trust_coefficient=TRUST, weight_decay=WD),
      params, grads)
  _assert_close(actual, {k: p.detach().numpy() for k, p in tparams.items()})


def test_inject_hyperparams():
  params, grads = _problem(seed=3)
  opt = optax.inject_hyperparams(lars.larc_sgd)(
      learning_rate=_lr_schedule, trust_coefficient=TRUST, weight_decay=WD)
  actual, _ = _run_optax(opt, params, grads)
  expected, _ = _run_optax(
      lars.larc_sgd(_lr_schedule, trust_coefficient=TRUST, weight_decay=WD),
      params, grads)
  _assert_close(actual, jax.tree.map(np.asarray, expected))
  # A callable mask must be named static, as for any optax factory.
  opt = optax.inject_hyperparams(lars.larc_sgd, static_args="mask")(
      learning_rate=0.1, mask=lambda p: {k: k != "w" for k in p})
  _run_optax(opt, params, grads)


def test_matrices_only():
  params = {"k": jnp.ones((2, 3)), "b": jnp.ones(3), "s": jnp.ones(())}
  assert lars.matrices_only(params) == {"k": True, "b": False, "s": False}


@pytest.mark.parametrize("kwargs, match", [
    (dict(trust_coefficient=-0.1), "trust_coefficient"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(eps=-1.0), "eps"),
])
def test_invalid_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lars.scale_by_larc(0.1, **kwargs)


def test_invalid_learning_rate_and_momentum():
  with pytest.raises(ValueError, match="learning_rate"):
    lars.larc_sgd(-0.1)
  with pytest.raises(ValueError, match="momentum"):
    lars.larc_sgd(0.1, momentum=1.0)


@pytest.mark.parametrize("name", ["mask", "weight_decay_mask"])
def test_mismatched_mask(name):
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
  tx = lars.scale_by_larc(0.1, **{name: {"a": True}})
  with pytest.raises(ValueError, match=name):
    tx.init(params)
  tx = lars.scale_by_larc(0.1, **{name: lambda p: [True, False]})
  with pytest.raises(ValueError, match=name):
    tx.init(params)
  with pytest.raises(ValueError, match=f"`{name}` must be None, True/False"):
    lars.scale_by_larc(0.1, **{name: {"a": 1.0, "b": 0.0}})
  tx = lars.scale_by_larc(0.1, **{name: lambda p: {"a": 1.0, "b": 0.0}})
  with pytest.raises(ValueError, match=f"`{name}` leaves must be static"):
    tx.init(params)


def test_params_none():
  params = {"a": jnp.ones((2, 2))}
  tx = lars.scale_by_larc(0.1)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, tx.init(params), None)
