"""Run configurations (ml_collections) and the presets of the paper's tables and figures."""

from experiments.configs.base import get_config
from experiments.configs.presets import get_preset
from experiments.configs.presets import Preset
from experiments.configs.presets import PRESETS
from experiments.configs.presets import SCALES
from experiments.methods import tuning_grid

__all__ = ["PRESETS", "Preset", "SCALES", "get_config", "get_preset",
           "tuning_grid"]
