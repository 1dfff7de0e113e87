"""ResNet for CIFAR (He et al., 2016, "Deep Residual Learning for Image
Recognition", §4.2), the ResNet-20 of the paper's image-classification task.

Architecture for depth 6n + 2 (n = 3 gives ResNet-20):

  conv3x3(16) - BN - ReLU
  stage 1: n basic blocks, 16 channels, stride 1
  stage 2: n basic blocks, 32 channels, first block stride 2
  stage 3: n basic blocks, 64 channels, first block stride 2
  global average pool - linear head

A basic block is conv3x3 - BN - ReLU - conv3x3 - BN, added to the shortcut, then
ReLU. The shortcut is the identity, or a strided 1x1 convolution + BN when the
shape changes (He et al.'s option B); with 10 classes ResNet-20 then has
272,474 trainable parameters (option A, zero padding, would have 269,722).

Initialisation follows the authors' PyTorch code (and Goyal et al., 2017): convs
have no bias and use He fan-out normal init, N(0, 2 / (k * k * out_channels));
BN has scale 1 and offset 0; the linear head uses PyTorch's default
U(±1/sqrt(fan_in)) for weight and bias. BN uses PyTorch's momentum 0.1 (flax
momentum 0.9) and eps 1e-5, and normalises over the local batch only: the
trainer vmaps one copy per worker, which gives per-worker statistics as in
Goyal et al. (2017).
"""

from collections.abc import Callable
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models import convolution

Dtype = Any

# He et al. (2015) normal init with the fan-out mode used by the CIFAR
# reference implementations: std = sqrt(2 / (kh * kw * out_channels)).
he_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch BatchNorm2d defaults, in flax's convention (running = m * running +
# (1 - m) * batch), so torch momentum 0.1 is flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def symmetric_uniform(bound: float) -> Callable[..., jax.Array]:
  """Initializer drawing from U(-bound, bound).

  Args:
    bound: half-width of the interval.

  Returns:
    A flax initializer.
  """

  def init(key: jax.Array, shape: tuple[int, ...],
           dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv_module(kernel_grad_chunk_size: int | None,
                **kwargs: Any) -> functools.partial:
  """``nn.Conv`` with He fan-out init, no bias and, optionally, a chunked kernel gradient.

  Args:
    kernel_grad_chunk_size: examples per chunk of the kernel gradient on CPU
      (``convolution.chunked_kernel_grad_conv``); ``None`` for plain
      ``lax.conv_general_dilated``.
    **kwargs: further ``nn.Conv`` attributes.

  Returns:
    A partial ``nn.Conv`` constructor.
  """
  if kernel_grad_chunk_size is not None:
    kwargs["conv_general_dilated"] = convolution.chunked_kernel_grad_conv(
        kernel_grad_chunk_size)
  return functools.partial(nn.Conv, **{"use_bias": False,
                                       "kernel_init": he_fan_out_normal, **kwargs})


def pytorch_linear(features: int, fan_in: int, dtype: Dtype,
                   name: str | None = None) -> nn.Dense:
  """A dense layer with PyTorch's default ``nn.Linear`` initialisation.

  Args:
    features: number of output features.
    fan_in: number of input features (flax bias initialisers do not see it).
    dtype: computation dtype.
    name: optional module name.

  Returns:
    An ``nn.Dense`` whose kernel and bias are U(±1/sqrt(fan_in)).
  """
  # variance_scaling(1/3, fan_in, uniform) has bound sqrt(3 * (1/3) / fan_in).
  return nn.Dense(
      features,
      dtype=dtype,
      kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                   "uniform"),
      bias_init=symmetric_uniform(1.0 / math.sqrt(fan_in)),
      name=name)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with a residual connection.

  Attributes:
    features: output channels.
    strides: stride of the first convolution and of the projection shortcut.
    dtype: computation dtype.
    kernel_grad_chunk_size: see ``ResNet``.
  """
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  kernel_grad_chunk_size: int | None = convolution.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = conv_module(self.kernel_grad_chunk_size, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype)

    y = conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
    y = norm(name="bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), self.strides, padding=0,
                      name="shortcut_conv")(x)
      shortcut = norm(name="shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """CIFAR ResNet of depth 6n + 2 (ResNet-20 by default).

  Attributes:
    num_classes: number of output classes.
    depth: total depth 6n + 2 (20, 32, 44, 56, 110, ...).
    dtype: computation dtype; parameters and BN statistics stay float32.
    kernel_grad_chunk_size: on CPU, compute each convolution's kernel gradient
      in batch chunks of this many examples (1.4x faster end to end), and
      loop over workers when vmapped over per-worker parameters (see
      ``experiments.models.convolution``). ``None``: plain
      ``lax.conv_general_dilated``, needed for forward-mode and higher-order
      differentiation.
  """
  num_classes: int = 10
  depth: int = 20
  dtype: Dtype = jnp.float32
  kernel_grad_chunk_size: int | None = convolution.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Classifies a batch of images.

    Args:
      x: images, shape (batch, height, width, channels), NHWC.
      train: batch statistics (and running-average updates, with
        ``mutable=['batch_stats']``) when true, running statistics otherwise.

    Returns:
      Logits of shape (batch, num_classes), in ``dtype``.
    """
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise ValueError(f"CIFAR ResNet depth must be 6n + 2 >= 8, got "
                       f"{self.depth}.")
    blocks_per_stage = (self.depth - 2) // 6

    x = conv_module(self.kernel_grad_chunk_size, dtype=self.dtype)(
        16, (3, 3), padding=1, name="conv_init")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON, dtype=self.dtype, name="bn_init")(x)
    x = nn.relu(x)
    for stage, features in enumerate((16, 32, 64)):
      for block in range(blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, dtype=self.dtype,
                       kernel_grad_chunk_size=self.kernel_grad_chunk_size,
                       name=f"stage{stage + 1}_block{block + 1}")(x,
                                                                  train=train)
    x = jnp.mean(x, axis=(1, 2))
    return pytorch_linear(self.num_classes, x.shape[-1], self.dtype,
                          name="head")(x)
