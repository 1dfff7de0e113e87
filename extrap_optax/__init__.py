"""extrap_optax: extrapolation for large-batch training as optax transformations.

Lin, Kong, Stich and Jaggi, "Extrapolation for Large-batch Training in Deep
Learning", ICML 2020.
"""

from extrap_optax._src.adam import adam
from extrap_optax._src.adam import adam_moment_extrapolation
from extrap_optax._src.adam import extrap_adam
from extrap_optax._src.collectives import all_reduce_mean
from extrap_optax._src.collectives import AllReduceMeanState
from extrap_optax._src.collectives import worker_index
from extrap_optax._src.communication import Communication
from extrap_optax._src.communication import periodic_averaging
from extrap_optax._src.communication import periodic_outer_step
from extrap_optax._src.communication import PeriodicAveragingState
from extrap_optax._src.communication import PeriodicOuterStepState
from extrap_optax._src.communication import synchronous
from extrap_optax._src.communication import SynchronousState
from extrap_optax._src.extrapolation import averages_models
from extrap_optax._src.elastic import resize_workers
from extrap_optax._src.extrapolation import evaluation_params
from extrap_optax._src.extrapolation import extrapolate
from extrap_optax._src.extrapolation import ExtrapolationState
from extrap_optax._src.lars import larc_sgd
from extrap_optax._src.lars import matrices_only
from extrap_optax._src.lars import scale_by_larc
from extrap_optax._src.lars import ScaleByLarcState
from extrap_optax._src.perturbations import filterwise_noise
from extrap_optax._src.perturbations import gradient_noise
from extrap_optax._src.perturbations import past_gradient
from extrap_optax._src.perturbations import Perturbation
from extrap_optax._src.perturbations import PerturbationContext
from extrap_optax._src.perturbations import smoothout_noise
from extrap_optax._src.local_sgd import diloco
from extrap_optax._src.local_sgd import post_local_sgd
from extrap_optax._src.schedules import constant_after_warmup
from extrap_optax._src.schedules import extrapolation_rate_schedule
from extrap_optax._src.schedules import goyal_schedule
from extrap_optax._src.schedules import inverse_sqrt_schedule
from extrap_optax._src.sgd import extrap_sgd
from extrap_optax._src.sgd import extrapolated_sgd
from extrap_optax._src.sgd import minibatch_sgd
from extrap_optax._src.sgd import nesterov_sgd
from extrap_optax._src.sgd import noise_extrap_sgd
from extrap_optax._src.smoothness import smoothness_probe
from extrap_optax._src.workers import check_per_worker
from extrap_optax._src.workers import over_stacked_workers
from extrap_optax._src.workers import Workers

__version__ = "0.1.0"

__all__ = (
    "AllReduceMeanState",
    "Communication",
    "ExtrapolationState",
    "Perturbation",
    "PerturbationContext",
    "PeriodicAveragingState",
    "PeriodicOuterStepState",
    "ScaleByLarcState",
    "SynchronousState",
    "Workers",
    "adam",
    "adam_moment_extrapolation",
    "all_reduce_mean",
    "averages_models",
    "check_per_worker",
    "constant_after_warmup",
    "diloco",
    "evaluation_params",
    "extrap_adam",
    "extrap_sgd",
    "extrapolate",
    "extrapolated_sgd",
    "extrapolation_rate_schedule",
    "filterwise_noise",
    "goyal_schedule",
    "gradient_noise",
    "inverse_sqrt_schedule",
    "larc_sgd",
    "matrices_only",
    "minibatch_sgd",
    "nesterov_sgd",
    "noise_extrap_sgd",
    "over_stacked_workers",
    "past_gradient",
    "periodic_averaging",
    "periodic_outer_step",
    "post_local_sgd",
    "resize_workers",
    "scale_by_larc",
    "smoothness_probe",
    "smoothout_noise",
    "synchronous",
    "worker_index",
)
