"""extrap_optax: extrapolation for large-batch training as optax transformations.

Lin, Kong, Stich and Jaggi, "Extrapolation for Large-batch Training in Deep
Learning", ICML 2020.
"""

from extrap_optax._src.collectives import all_reduce_mean
from extrap_optax._src.collectives import AllReduceMeanState
from extrap_optax._src.collectives import worker_index
from extrap_optax._src.extrapolation import evaluation_params
from extrap_optax._src.extrapolation import extrapolate
from extrap_optax._src.extrapolation import ExtrapolationState
from extrap_optax._src.perturbations import filterwise_noise
from extrap_optax._src.perturbations import gradient_noise
from extrap_optax._src.perturbations import past_gradient
from extrap_optax._src.perturbations import Perturbation
from extrap_optax._src.perturbations import PerturbationContext
from extrap_optax._src.perturbations import smoothout_noise
from extrap_optax._src.sgd import extrap_sgd
from extrap_optax._src.sgd import extrapolated_sgd
from extrap_optax._src.sgd import matrices_only
from extrap_optax._src.sgd import minibatch_sgd
from extrap_optax._src.sgd import nesterov_sgd
from extrap_optax._src.sgd import noise_extrap_sgd
from extrap_optax._src.workers import Workers

__version__ = "0.1.0"

__all__ = (
    "AllReduceMeanState",
    "ExtrapolationState",
    "Perturbation",
    "PerturbationContext",
    "Workers",
    "all_reduce_mean",
    "evaluation_params",
    "extrap_sgd",
    "extrapolate",
    "extrapolated_sgd",
    "filterwise_noise",
    "gradient_noise",
    "matrices_only",
    "minibatch_sgd",
    "nesterov_sgd",
    "noise_extrap_sgd",
    "past_gradient",
    "smoothout_noise",
    "worker_index",
)
