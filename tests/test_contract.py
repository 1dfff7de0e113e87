"""Every transformation of extrap_optax keeps the optax contract (tests/contract.py).

To cover a new transformation, append an entry to TRANSFORMS:

    pytest.param(<factory>, <hyperparameters>, id="<name>")

where `factory(**hyperparameters)` builds it for one worker (`axis_name=None`)
and every value in the dict is a hyperparameter that `optax.inject_hyperparams`
may turn into an array (a float, or a schedule).
"""

import optax
import pytest

import extrap_optax
from tests import contract

TRANSFORMS = [
    pytest.param(
        lambda **hp: extrap_optax.extrap_sgd(**hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05, weight_decay=1e-2),
        id="extrap_sgd"),
    pytest.param(
        lambda **hp: extrap_optax.minibatch_sgd(**hp),
        dict(learning_rate=0.1, weight_decay=1e-2),
        id="minibatch_sgd"),
    pytest.param(
        lambda **hp: extrap_optax.noise_extrap_sgd(noise="uniform", seed=1, **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05),
        id="noise_extrap_sgd-uniform"),
    pytest.param(
        lambda **hp: extrap_optax.noise_extrap_sgd(noise="gaussian", seed=2, **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05),
        id="noise_extrap_sgd-gaussian"),
    pytest.param(
        lambda **hp: extrap_optax.noise_extrap_sgd(noise="smoothout", seed=3, **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05),
        id="noise_extrap_sgd-smoothout"),
    pytest.param(
        lambda **hp: extrap_optax.noise_extrap_sgd(noise="gradient", **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05),
        id="noise_extrap_sgd-gradient"),
    pytest.param(
        lambda **hp: extrap_optax.extrapolated_sgd(
            perturbation=extrap_optax.gradient_noise(), **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05),
        id="extrapolated_sgd-gradient_noise"),
    pytest.param(
        lambda **hp: extrap_optax.nesterov_sgd(**hp),
        dict(learning_rate=0.1, weight_decay=1e-2),
        id="nesterov_sgd"),
    pytest.param(
        lambda **hp: optax.chain(extrap_optax.all_reduce_mean(None), optax.sgd(**hp)),
        dict(learning_rate=0.1, momentum=0.9),
        id="all_reduce_mean+sgd"),
    pytest.param(
        lambda **hp: extrap_optax.extrap_sgd(trust_coefficient=0.02, **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05, weight_decay=1e-2),
        id="extrap_sgd-lars"),
    pytest.param(
        lambda **hp: extrap_optax.extrap_sgd(
            trust_coefficient=0.02, extrapolation_scaling="trust_ratio", **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05, weight_decay=1e-2),
        id="extrap_sgd-trust_ratio"),
    pytest.param(
        lambda **hp: extrap_optax.scale_by_larc(**hp),
        dict(learning_rate=0.1, trust_coefficient=0.02, weight_decay=1e-2),
        id="scale_by_larc"),
    pytest.param(
        lambda **hp: extrap_optax.larc_sgd(**hp),
        dict(learning_rate=0.1, weight_decay=1e-2),
        id="larc_sgd"),
    pytest.param(
        lambda **hp: extrap_optax.extrap_adam(**hp),
        dict(learning_rate=0.01, extrapolation_rate=0.005),
        id="extrap_adam"),
    pytest.param(
        # The printed formula divides by ṽ, not √ṽ: with optax's β2 = 0.999
        # the offsets are 20x those of the paper's β2 = 0.98, and rounding
        # differences between the wrappers grow past the tolerance.
        lambda **hp: extrap_optax.extrap_adam(paper_literal=True, **hp),
        dict(learning_rate=0.01, extrapolation_rate=0.005, b2=0.98, eps=1e-9),
        id="extrap_adam-paper_literal"),
    pytest.param(
        lambda **hp: extrap_optax.adam(**hp),
        dict(learning_rate=0.01),
        id="adam"),
    pytest.param(
        lambda **hp: extrap_optax.post_local_sgd(start_step=1, sync_period=2, **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05, weight_decay=1e-2),
        id="post_local_sgd-extrap"),
    pytest.param(
        lambda **hp: extrap_optax.post_local_sgd(
            start_step=0, sync_period=1, trust_coefficient=0.02, **hp),
        dict(learning_rate=0.1, weight_decay=1e-2),
        id="post_local_sgd-lars"),
]

parametrize = pytest.mark.parametrize(("factory", "hp"), TRANSFORMS)


@parametrize
def test_jit_does_not_retrace(factory, hp):
  contract.check_jit_no_retrace(factory, hp)


@parametrize
def test_inject_hyperparams(factory, hp):
  contract.check_inject_hyperparams(factory, hp)


@parametrize
def test_bfloat16(factory, hp):
  contract.check_bfloat16(factory, hp)


@parametrize
def test_inside_multi_steps(factory, hp):
  contract.check_multi_steps(factory, hp)


@parametrize
def test_after_gradient_clipping(factory, hp):
  contract.check_after_clipping(factory, hp)


@parametrize
def test_checkpoint_round_trip(factory, hp, tmp_path):
  contract.check_checkpoint_round_trip(factory, hp, tmp_path)
