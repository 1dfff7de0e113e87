"""Schedules against their closed forms, written here independently."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from extrap_optax._src import schedules

# CIFAR-10 at the paper's scale: K = 32 workers of 256, 50,000 samples.
K, B, N, EPOCHS = 32, 256, 50_000, 300
STEPS_PER_EPOCH = N // (K * B)  # 6
TOTAL = EPOCHS * STEPS_PER_EPOCH  # 1800
BASE = 0.1


def _goyal_reference(step, base=BASE, peak=BASE * K, warmup=5 * STEPS_PER_EPOCH,
                     boundaries=(TOTAL // 2, 3 * TOTAL // 4)):
  if step < warmup:
    # App. C: increment (K·γ − γ) / (H·N/(K·B)) per iteration from γ.
    return base + step * (peak - base) / warmup
  return peak * 0.1 ** sum(step >= b for b in boundaries)


def _goyal(**kwargs):
  args = dict(num_workers=K, local_batch_size=B, steps_per_epoch=STEPS_PER_EPOCH,
              total_steps=TOTAL)
  args.update(kwargs)
  return schedules.goyal_schedule(BASE, **args)


def _check(schedule, reference, steps):
  actual = [float(schedule(s)) for s in steps]
  np.testing.assert_allclose(actual, [reference(s) for s in steps], rtol=1e-6)


def test_goyal_values():
  warmup = 5 * STEPS_PER_EPOCH
  steps = [0, 1, warmup // 2, warmup - 1, warmup, warmup + 1,
           TOTAL // 2 - 1, TOTAL // 2, TOTAL // 2 + 1,
           3 * TOTAL // 4 - 1, 3 * TOTAL // 4, TOTAL - 1, TOTAL + 10]
  _check(_goyal(), _goyal_reference, steps)
  assert float(_goyal()(0)) == pytest.approx(BASE)
  assert float(_goyal()(warmup)) == pytest.approx(BASE * K)
  assert float(_goyal()(TOTAL // 2)) == pytest.approx(BASE * K * 0.1)
  assert float(_goyal()(3 * TOTAL // 4)) == pytest.approx(BASE * K * 0.01)


def test_goyal_reference_batch_and_fractional_boundaries():
  # Peak γ0·K·B/B_ref = 0.1·32·256/128; boundary ceil(0.3·10) = 3, not 4.
  schedule = schedules.goyal_schedule(
      BASE, num_workers=K, local_batch_size=B, reference_batch_size=128,
      steps_per_epoch=1, warmup_epochs=2, total_steps=10,
      decay_fractions=(0.3, 0.7, 0.95), decay_factor=0.5)
  peak = BASE * K * B / 128

  def reference(s):
    if s < 2:
      return BASE + s * (peak - BASE) / 2
    return peak * 0.5 ** sum(s >= b for b in (3, 7, 10))

  _check(schedule, reference, range(12))


def test_constant_after_warmup():
  warmup = 5 * STEPS_PER_EPOCH
  reference = lambda s: _goyal_reference(s, boundaries=())
  steps = [0, 7, warmup - 1, warmup, TOTAL, 10 * TOTAL]
  _check(_goyal(decay_fractions=()), reference, steps)
  _check(schedules.constant_after_warmup(
      BASE, num_workers=K, local_batch_size=B, steps_per_epoch=STEPS_PER_EPOCH),
         reference, steps)


def test_no_warmup():
  schedule = _goyal(warmup_epochs=0)
  _check(schedule, lambda s: _goyal_reference(s, warmup=0), [0, 1, 900, 1350])


def _inverse_sqrt_reference(step, d_model, warmup):
  s = step + 1  # The documented convention: count 0 uses s = 1.
  return d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)


@pytest.mark.parametrize("global_batch, warmup", [
    (64, 4000), (20 * 64, 200), (80 * 64, 50), (3000, 85), (10**6, 1)])
def test_inverse_sqrt(global_batch, warmup):
  schedule = schedules.inverse_sqrt_schedule(256, global_batch_size=global_batch)
  steps = sorted({0, 1, max(warmup - 2, 0), warmup - 1, warmup, warmup + 1,
                  4 * warmup, 10**5})
  _check(schedule, lambda s: _inverse_sqrt_reference(s, 256, warmup), steps)
  # Peak at count w − 1 (s = w): d^-0.5 · w^-0.5.
  values = [float(schedule(s)) for s in range(max(0, warmup - 3), warmup + 3)]
  assert max(values) == pytest.approx(256 ** -0.5 * warmup ** -0.5, rel=1e-6)
  assert float(schedule(0)) > 0


def test_inverse_sqrt_scale():
  schedule = schedules.inverse_sqrt_schedule(
      512, global_batch_size=128, reference_warmup_steps=100, scale=2.0)
  _check(schedule, lambda s: 2.0 * _inverse_sqrt_reference(s, 512, 50),
         [0, 48, 49, 50, 1000])


def test_extrapolation_rate():
  assert schedules.extrapolation_rate_schedule(3.2, num_workers=32) == (
      pytest.approx(0.1))
  assert schedules.extrapolation_rate_schedule(
      3.2, num_workers=32, scale=2.0) == pytest.approx(0.2)
  lr = _goyal()
  hat = schedules.extrapolation_rate_schedule(lr, num_workers=K, scale=4.0)
  for s in [0, 29, 30, 900, 1350]:
    assert float(hat(s)) == pytest.approx(4.0 * _goyal_reference(s) / K,
                                          rel=1e-6)


@pytest.mark.parametrize("schedule", [
    _goyal(),
    schedules.inverse_sqrt_schedule(256, global_batch_size=1280),
    schedules.extrapolation_rate_schedule(_goyal(), num_workers=K),
], ids=["goyal", "inverse_sqrt", "extrapolation"])
def test_jit_and_inject_hyperparams(schedule):
  steps = jnp.arange(0, 2000, 37)
  np.testing.assert_allclose(
      jax.jit(jax.vmap(schedule))(steps), [float(schedule(s)) for s in steps],
      rtol=1e-6)
  # inject_hyperparams(sgd) takes the schedule's value at each step.
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  params = jnp.zeros(())
  state = opt.init(params)
  update = jax.jit(opt.update)
  for s in range(3):
    updates, state = update(jnp.ones(()), state, params)
    assert float(updates) == pytest.approx(-float(schedule(s)), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_workers=0), "num_workers"),
    (dict(local_batch_size=-256), "local_batch_size"),
    (dict(reference_batch_size=0), "reference_batch_size"),
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_epochs=-1), "warmup_epochs"),
    (dict(total_steps=20), "warmup .* longer than `total_steps`"),
    (dict(decay_fractions=(0.5, 1.0)), r"decay_fractions.*\(0, 1\)"),
    (dict(decay_fractions=(0.0,)), r"decay_fractions.*\(0, 1\)"),
    (dict(decay_fractions=(0.75, 0.5)), "strictly increasing"),
    (dict(decay_fractions=(0.01, 0.5)), "inside the warmup"),
    (dict(decay_factor=0.0), "decay_factor"),
])
def test_goyal_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _goyal(**kwargs)


def test_other_validation():
  with pytest.raises(ValueError, match="base_learning_rate"):
    schedules.goyal_schedule(0.0, num_workers=1, local_batch_size=1,
                             steps_per_epoch=1, total_steps=10)
  with pytest.raises(ValueError, match="global_batch_size"):
    schedules.inverse_sqrt_schedule(256, global_batch_size=0)
  with pytest.raises(ValueError, match="d_model"):
    schedules.inverse_sqrt_schedule(0, global_batch_size=64)
  with pytest.raises(ValueError, match="scale"):
    schedules.inverse_sqrt_schedule(256, global_batch_size=64, scale=-1.0)
  with pytest.raises(ValueError, match="num_workers"):
    schedules.extrapolation_rate_schedule(0.1, num_workers=0)
  with pytest.raises(ValueError, match="scale"):
    schedules.extrapolation_rate_schedule(0.1, num_workers=2, scale=-1.0)
