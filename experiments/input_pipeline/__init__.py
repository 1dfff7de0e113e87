"""Input pipelines for the three benchmark tasks (CIFAR, WikiText-2, Multi30k).

Real data lives outside the repository in `$EXTRAP_OPTAX_DATA_DIR` (see
`common.DATA_DIR_ENV`); every loader also takes an explicit `data_dir`.
Importing `wikitext2` or `multi30k` registers their tfds builders.
"""

from experiments.input_pipeline.common import ChecksumError
from experiments.input_pipeline.common import DATA_DIR_ENV
from experiments.input_pipeline.common import MissingDataError
from experiments.input_pipeline.common import Vocab

__all__ = ["ChecksumError", "DATA_DIR_ENV", "MissingDataError", "Vocab"]
