"""Every transformation of extrap_optax keeps the optax contract (tests/contract.py).

To cover a new transformation, append an entry to TRANSFORMS:

    pytest.param(<factory>, <hyperparameters>, id="<name>")

where `factory(**hyperparameters)` builds it for one worker (`axis_name=None`)
and every value in the dict is a hyperparameter that `optax.inject_hyperparams`
may turn into an array (a float, or a schedule).
"""

import pathlib

import jax.numpy as jnp
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
        lambda axis_name=None, **hp: optax.chain(
            extrap_optax.all_reduce_mean(axis_name), optax.sgd(**hp)),
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
    pytest.param(
        lambda **hp: extrap_optax.diloco(sync_period=2, **hp),
        dict(learning_rate=0.01),
        id="diloco"),
    pytest.param(
        lambda **hp: extrap_optax.diloco(sync_period=2, start_step=1, **hp),
        dict(learning_rate=0.01, extrapolation_rate=0.005),
        id="diloco-extrap"),
    pytest.param(
        lambda **hp: extrap_optax.noise_extrap_sgd(
            noise="uniform", seed=1, generator="counter_hash", **hp),
        dict(learning_rate=0.1, extrapolation_rate=0.05),
        id="noise_extrap_sgd-uniform-counter_hash"),
]

parametrize = pytest.mark.parametrize(("factory", "hp"), TRANSFORMS)
# The transformations with no worker axis (they see one worker's gradient).
ONE_WORKER_ONLY = {"nesterov_sgd", "scale_by_larc", "larc_sgd"}
NUM_WORKERS = 4
WORKER_PARAMS = [
    pytest.param(*entry.values, id=f"{entry.id}-K{NUM_WORKERS}")
    for entry in TRANSFORMS if entry.id not in ONE_WORKER_ONLY]
parametrize_workers = pytest.mark.parametrize(("factory", "hp"), WORKER_PARAMS)
# The same on 8 workers stacked over an explicit mesh axis (global view).
parametrize_stacked = pytest.mark.parametrize(("factory", "hp"), [
    pytest.param(*entry.values, id=f"{entry.id}-stacked8")
    for entry in TRANSFORMS if entry.id not in ONE_WORKER_ONLY])


@pytest.fixture(scope="module")
def workers():
  return extrap_optax.Workers(num_workers=NUM_WORKERS)


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


# optax's shared optimizer tests (optax/contrib/_common_test.py) and sharding
# tests (optax/_src/sharding_test.py), on one worker and on K workers.

FLOAT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]


@parametrize
def test_extra_args(factory, hp):
  contract.check_extra_args(factory, hp)


@parametrize_workers
def test_extra_args_on_workers(factory, hp, workers):
  contract.check_extra_args(factory, hp, workers)


@parametrize
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=str)
def test_preserve_dtype(factory, hp, dtype):
  contract.check_preserve_dtype(factory, hp, dtype)


@parametrize_workers
def test_preserve_dtype_on_workers(factory, hp, workers):
  contract.check_preserve_dtype(factory, hp, jnp.bfloat16, workers)


@parametrize
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=str)
def test_gradient_accumulation(factory, hp, dtype):
  contract.check_gradient_accumulation(factory, hp, dtype)


@parametrize_workers
def test_gradient_accumulation_on_workers(factory, hp, workers):
  contract.check_gradient_accumulation(factory, hp, jnp.bfloat16, workers)


@parametrize
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_state_stable_under_cond_and_jit(factory, hp, dtype):
  contract.check_cond_stability(factory, hp, dtype)


@parametrize_workers
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=lambda d: jnp.dtype(d).name)
def test_state_stable_under_cond_and_jit_on_workers(factory, hp, dtype, workers):
  contract.check_cond_stability(factory, hp, dtype, workers)


@parametrize
def test_learning_rate_schedule(factory, hp):
  contract.check_learning_rate_schedule(factory, hp)


@parametrize
def test_map_params(factory, hp):
  contract.check_map_params(factory, hp)


@parametrize
def test_init_from_abstract_params(factory, hp):
  contract.check_abstract_init(factory, hp)


@parametrize_workers
def test_init_from_abstract_params_on_workers(factory, hp, workers):
  contract.check_abstract_init(factory, hp, workers)


@parametrize
def test_sharding_type_init_matches_update(factory, hp):
  contract.check_sharding_type_init_matches_update(factory, hp)


@parametrize
def test_sharding_type_preserved_with_jit(factory, hp):
  contract.check_sharding_type_preserved_with_jit(factory, hp)


@parametrize_stacked
def test_sharding_type_init_matches_update_stacked(factory, hp):
  contract.check_sharding_type_init_matches_update(factory, hp, stacked=True)


@parametrize_stacked
def test_sharding_type_preserved_with_jit_stacked(factory, hp):
  contract.check_sharding_type_preserved_with_jit(factory, hp, stacked=True)


# The table of docs/contract.md: every transformation of TRANSFORMS by every
# check above, on one worker and on K workers. A check is listed with the test
# functions that run it; `test_docs_table_is_current` keeps the page in step.
CHECKS = [
    ("jit traces and compiles once", test_jit_does_not_retrace, None),
    ("`inject_hyperparams`", test_inject_hyperparams, None),
    ("bfloat16 params, updates and state", test_bfloat16, None),
    ("inside `MultiSteps` (k=2), against mean gradients", test_inside_multi_steps, None),
    ("after `clip_by_global_norm`", test_after_gradient_clipping, None),
    ("orbax checkpoint resumes exactly", test_checkpoint_round_trip, None),
    ("extra `update` arguments, no recompilation",
     test_extra_args, test_extra_args_on_workers),
    ("updates keep the params' dtype", test_preserve_dtype, test_preserve_dtype_on_workers),
    ("`MultiSteps` (k=4): first update zero",
     test_gradient_accumulation, test_gradient_accumulation_on_workers),
    ("state types stable under `lax.cond` + jit (f16, bf16, f32, f64)",
     test_state_stable_under_cond_and_jit, test_state_stable_under_cond_and_jit_on_workers),
    ("constant schedule = constant rate", test_learning_rate_schedule, None),
    ("`optax.tree.map_params`", test_map_params, None),
    ("`init` from `jax.ShapeDtypeStruct`, `jax.eval_shape`",
     test_init_from_abstract_params, test_init_from_abstract_params_on_workers),
    ("explicit mesh: `init` and `update` state types equal",
     test_sharding_type_init_matches_update, test_sharding_type_init_matches_update_stacked),
    ("explicit mesh: jit keeps the state types",
     test_sharding_type_preserved_with_jit, test_sharding_type_preserved_with_jit_stacked),
]
DOCS_PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "contract.md"
TABLE_BEGIN, TABLE_END = "<!-- contract-table:begin -->", "<!-- contract-table:end -->"


def contract_table() -> str:
  """The Markdown table: one row per transformation, one column per check."""
  header = ["transformation"] + [
      f"{i}" for i in range(1, len(CHECKS) + 1)]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for entry in TRANSFORMS:
    cells = [f"`{entry.id}`"]
    for _, one_worker, on_workers in CHECKS:
      cell = "1"
      if on_workers is not None and entry.id not in ONE_WORKER_ONLY:
        cell += (", stacked K=8" if on_workers.__name__.endswith("_stacked")
                 else f", K={NUM_WORKERS}")
      cells.append(cell)
    lines.append("| " + " | ".join(cells) + " |")
  legend = [f"{i}. {title} (`{one.__name__}`"
            + (f", `{many.__name__}`" if many else "") + ")"
            for i, (title, one, many) in enumerate(CHECKS, 1)]
  return "\n".join(["Checks:", "", *legend, "", *lines])


def test_every_check_is_in_the_table():
  tests = {name for name, obj in globals().items()
           if name.startswith("test_") and callable(obj)
           and name not in ("test_every_check_is_in_the_table", "test_docs_table_is_current")}
  listed = {fn.__name__ for _, one, many in CHECKS for fn in (one, many) if fn}
  assert tests == listed, tests ^ listed


def test_docs_table_is_current():
  text = DOCS_PAGE.read_text()
  assert text.count(TABLE_BEGIN) == text.count(TABLE_END) == 1
  table = text.split(TABLE_BEGIN)[1].split(TABLE_END)[0].strip()
  assert table == contract_table(), (
      "docs/contract.md is stale: run `python -m tests.test_contract`")


if __name__ == "__main__":
  head, rest = DOCS_PAGE.read_text().split(TABLE_BEGIN)
  DOCS_PAGE.write_text(f"{head}{TABLE_BEGIN}\n{contract_table()}\n{TABLE_END}"
                       + rest.split(TABLE_END)[1])
