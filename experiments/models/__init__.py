"""Flax models of the paper's three benchmark tasks (Lin et al., 2020, App. C).

- CIFAR-10/100: ResNet-20 (``resnet.py``) and VGG-11 at half width, with and
  without BatchNorm (``vgg.py``);
- WikiText-2: 2-layer LSTM language model with tied embeddings (``lstm.py``);
- Multi30k: pre-LayerNorm Transformer at half width (``transformer.py``), with
  greedy and beam-search decoding (``decoding.py``).

The models use flax.linen rather than NNX: linen parameters (and BN statistics)
are plain pytrees, so the K per-worker copies of a model can be stacked along a
leading axis and driven by ``jax.vmap`` or ``jax.shard_map`` without any
module-state bookkeeping. BatchNorm normalises over whatever batch one copy sees
and has no cross-worker ``axis_name``: statistics are per worker (Goyal et al.,
2017). Every model computes in ``dtype`` (float32 by default, bfloat16 for
mixed precision) and keeps float32 parameters. The CIFAR models' convolutions
compute their kernel gradients in batch chunks on CPU (``convolution.py``),
which makes the ResNet-20 step 1.4x faster on XLA:CPU.
"""

import functools
from typing import Any

import flax.linen as nn

from experiments.models.lstm import Carry
from experiments.models.lstm import language_model_loss
from experiments.models.lstm import LSTMLanguageModel
from experiments.models.lstm import WIKITEXT2_VOCAB_SIZE
from experiments.models.resnet import BasicBlock
from experiments.models.resnet import ResNet
from experiments.models.decoding import beam_search
from experiments.models.decoding import beam_search_from_step
from experiments.models.decoding import greedy_decode
from experiments.models.decoding import greedy_search
from experiments.models.transformer import label_smoothed_cross_entropy
from experiments.models.decoding import length_penalty
from experiments.models.transformer import PAD_ID
from experiments.models.transformer import Transformer
from experiments.models.vgg import VGG
from experiments.models.vgg import VGG11_HALF_WIDTH

_MODELS = {
    "resnet20": functools.partial(ResNet, depth=20),
    "vgg11": functools.partial(VGG, use_batch_norm=False),
    "vgg11_bn": functools.partial(VGG, use_batch_norm=True),
    "lstm": LSTMLanguageModel,
    "transformer": Transformer,
}

MODEL_NAMES = tuple(_MODELS)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds one of the paper's models by name.

  Args:
    name: one of ``MODEL_NAMES``: 'resnet20', 'vgg11', 'vgg11_bn', 'lstm',
      'transformer'.
    **kwargs: module attributes, e.g. ``num_classes=100`` for the CIFAR models,
      ``vocab_size`` for the LSTM, ``src_vocab_size``/``tgt_vocab_size`` for
      the Transformer, ``dtype`` for all.

  Returns:
    The (unbound) flax module.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in _MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: "
                     f"{', '.join(MODEL_NAMES)}.")
  return _MODELS[name](**kwargs)


__all__ = [
    "BasicBlock",
    "Carry",
    "LSTMLanguageModel",
    "MODEL_NAMES",
    "PAD_ID",
    "ResNet",
    "Transformer",
    "VGG",
    "VGG11_HALF_WIDTH",
    "WIKITEXT2_VOCAB_SIZE",
    "beam_search",
    "beam_search_from_step",
    "get_model",
    "greedy_decode",
    "greedy_search",
    "label_smoothed_cross_entropy",
    "language_model_loss",
    "length_penalty",
]
