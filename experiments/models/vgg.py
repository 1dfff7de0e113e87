"""VGG-11 for CIFAR at half width (Simonyan & Zisserman, 2015, configuration
"A"), the VGG-11 of the paper's image-classification task.

The paper halves every width of VGG-11 (its footnote 10: GPU memory). With
``M`` a 2x2 max-pool of stride 2, the feature extractor is

  32 - M - 64 - M - 128 - 128 - M - 256 - 256 - M - 256 - 256 - M

(VGG-11's 64 - M - 128 - M - 256 - 256 - M - 512 - 512 - M - 512 - 512 - M,
halved), each number a 3x3 convolution with padding 1 followed, optionally, by
BatchNorm, then ReLU. Five pools take a 32x32 image to 1x1x256, which a single
linear layer maps to the logits (no dropout, no hidden classifier layers).

Initialisation follows the PyTorch CIFAR VGG code: He fan-out normal conv
kernels, N(0, 2 / (3 * 3 * out_channels)); conv biases zero (convs have a bias
only without BN, since BN's offset makes it redundant); BN scale 1, offset 0;
PyTorch's default U(±1/sqrt(fan_in)) for the linear head. BN statistics are per
worker, as for the ResNet.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models import convolution
from experiments.models.resnet import BN_EPSILON
from experiments.models.resnet import BN_MOMENTUM
from experiments.models.resnet import conv_module
from experiments.models.resnet import pytorch_linear

Dtype = Any

# VGG-11 (configuration "A") at half width; "M" is a 2x2 max-pool.
VGG11_HALF_WIDTH: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M",
                                           256, 256, "M", 256, 256, "M")


class VGG(nn.Module):
  """VGG feature extractor plus a single linear classifier.

  Attributes:
    num_classes: number of output classes.
    use_batch_norm: BatchNorm after every convolution (then convs have no bias).
    config: channel counts and ``"M"`` max-pools, VGG-11 at half width by
      default.
    dtype: computation dtype; parameters and BN statistics stay float32.
    kernel_grad_chunk_size: as for ``ResNet``: the CPU kernel gradient in batch
      chunks of this many examples and loops over vmapped workers; ``None``
      for plain ``lax.conv_general_dilated``.
  """
  num_classes: int = 10
  use_batch_norm: bool = False
  config: Sequence[int | str] = VGG11_HALF_WIDTH
  dtype: Dtype = jnp.float32
  kernel_grad_chunk_size: int | None = convolution.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Classifies a batch of images.

    Args:
      x: images, shape (batch, 32, 32, channels), NHWC.
      train: BN uses batch statistics when true, running statistics otherwise
        (no effect without BN).

    Returns:
      Logits of shape (batch, num_classes), in ``dtype``.
    """
    conv = conv_module(self.kernel_grad_chunk_size, kernel_size=(3, 3),
                       padding=1, use_bias=not self.use_batch_norm,
                       dtype=self.dtype)
    num_convs = 0
    for entry in self.config:
      if entry == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      num_convs += 1
      x = conv(int(entry), name=f"conv{num_convs}")(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                         epsilon=BN_EPSILON, dtype=self.dtype,
                         name=f"bn{num_convs}")(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    return pytorch_linear(self.num_classes, x.shape[-1], self.dtype,
                          name="head")(x)
