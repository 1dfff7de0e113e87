"""Input pipelines for the three benchmark tasks (CIFAR, WikiText-2, Multi30k).

Sources apart from the pipelines that feed the workers: `cifar_tfds` (CIFAR in
memory and its tfds source) and `cifar_jpeg` (the offline JPEG files) feed
`cifar` (batches made on the device from the step); `wikitext2` and
`multi30k` each read their files and batch them; `tokenizer` and `bleu` are
the translation's text tools; `common` has data directories, checksums and
vocabularies.

Real data lives outside the repository in `$EXTRAP_OPTAX_DATA_DIR` (see
`common.DATA_DIR_ENV`); every loader also takes an explicit `data_dir`.
Importing `wikitext2` or `multi30k` registers their tfds builders.
"""

from experiments.input_pipeline.common import ChecksumError
from experiments.input_pipeline.common import DATA_DIR_ENV
from experiments.input_pipeline.common import MissingDataError
from experiments.input_pipeline.common import Vocab

__all__ = ["ChecksumError", "DATA_DIR_ENV", "MissingDataError", "Vocab"]
