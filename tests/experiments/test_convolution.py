"""Tests for the batch-chunked kernel gradient of ``experiments.models.convolution``.

The reference is XLA's own ``lax.conv_general_dilated`` and its autodiff.
"""

import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models
from experiments.models import convolution

# (lhs shape, rhs shape, conv keyword arguments, chunk size)
CASES = {
    "nhwc_uneven_chunks": ((40, 9, 9, 3), (3, 3, 3, 5), dict(
        window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")), 16),
    "stride_2": ((24, 8, 8, 4), (3, 3, 4, 6), dict(
        window_strides=(2, 2), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")), 8),
    "one_by_one_valid": ((24, 8, 8, 4), (1, 1, 4, 6), dict(
        window_strides=(2, 2), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC")), 5),
    "dilations": ((12, 10, 10, 2), (3, 3, 2, 3), dict(
        window_strides=(1, 1), padding=((2, 1), (0, 2)), lhs_dilation=(2, 1),
        rhs_dilation=(1, 2), dimension_numbers=("NHWC", "HWIO", "NHWC")), 4),
    "feature_groups": ((12, 6, 6, 4), (3, 3, 2, 6), dict(
        window_strides=(1, 1), padding="SAME", feature_group_count=2,
        dimension_numbers=("NHWC", "HWIO", "NHWC")), 4),
    "nchw": ((10, 3, 7, 7), (5, 3, 3, 3), dict(
        window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NCHW", "OIHW", "NCHW")), 3),
    "batch_not_above_chunk": ((4, 6, 6, 2), (3, 3, 2, 3), dict(
        window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")), 4),
}


def _operands(lhs_shape, rhs_shape, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.standard_normal(lhs_shape), dtype)
  rhs = jnp.asarray(rng.standard_normal(rhs_shape) * 0.3, dtype)
  return lhs, rhs


def _value_and_grads(conv, lhs, rhs, kwargs):
  def loss(lhs, rhs):
    out = conv(lhs, rhs, **kwargs)
    # A cotangent that differs per example, so that a wrongly chunked batch
    # axis would show.
    weights = jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape) % 7 - 3
    return jnp.sum(out.astype(jnp.float32) * weights), out

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(lhs, rhs)


@pytest.mark.parametrize("case", CASES)
def test_matches_xla_convolution_and_its_gradients(case):
  lhs_shape, rhs_shape, kwargs, chunk = CASES[case]
  lhs, rhs = _operands(lhs_shape, rhs_shape)
  (loss, out), (dlhs, drhs) = _value_and_grads(
      convolution.chunked_kernel_grad_conv(chunk), lhs, rhs, kwargs)
  (ref_loss, ref_out), (ref_dlhs, ref_drhs) = _value_and_grads(
      lax.conv_general_dilated, lhs, rhs, kwargs)
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_array_equal(loss, ref_loss)
  np.testing.assert_array_equal(dlhs, ref_dlhs)
  # Only the summation order over the batch differs: float32 rounding relative
  # to the largest entry (entries are sums of terms of both signs).
  np.testing.assert_allclose(drhs, ref_drhs, rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(ref_drhs))))


def test_bfloat16_kernel_gradient_is_accumulated_in_float32():
  lhs_shape, rhs_shape, kwargs, _ = CASES["nhwc_uneven_chunks"]
  lhs, rhs = _operands(lhs_shape, rhs_shape, jnp.bfloat16)
  _, (_, drhs) = _value_and_grads(convolution.chunked_kernel_grad_conv(4), lhs,
                                  rhs, kwargs)
  _, (_, reference) = _value_and_grads(
      lax.conv_general_dilated, lhs.astype(jnp.float32),
      rhs.astype(jnp.float32), kwargs)
  assert drhs.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(reference)))
  np.testing.assert_allclose(drhs.astype(jnp.float32), reference,
                             atol=0.02 * scale)


def _lowered_convolutions(conv, batch, platforms=None):
  lhs, rhs = _operands((batch, 8, 8, 3), (3, 3, 3, 4))
  kwargs = CASES["nhwc_uneven_chunks"][2]
  grad = jax.jit(jax.grad(lambda l, r: jnp.sum(conv(l, r, **kwargs)),
                          argnums=(0, 1)))
  traced = grad.trace(lhs, rhs)
  lowered = (traced.lower(lowering_platforms=platforms) if platforms
             else traced.lower())
  return len(re.findall(r"stablehlo\.convolution", lowered.as_text()))


def test_cpu_lowering_computes_one_kernel_gradient_per_chunk():
  chunked = convolution.chunked_kernel_grad_conv(16)
  # XLA's gradient: one input-gradient and one kernel-gradient convolution.
  assert _lowered_convolutions(lax.conv_general_dilated, 64) == 2
  # 64 examples in chunks of 16: four kernel-gradient convolutions.
  assert _lowered_convolutions(chunked, 64) == 1 + 4


def test_other_platforms_keep_xla_kernel_gradient():
  chunked = convolution.chunked_kernel_grad_conv(16)
  assert _lowered_convolutions(chunked, 64, platforms=("cuda",)) == 2


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "16"])
def test_rejects_bad_chunk_sizes(chunk_size):
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    convolution.chunked_kernel_grad_conv(chunk_size)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet20", dict(depth=8)),
    ("vgg11_bn", dict(config=(8, "M", 16, "M"))),
    ("vgg11", dict(config=(8, "M", 16, "M"))),
])
def test_models_train_the_same_with_and_without_chunking(name, kwargs):
  images = jax.random.normal(jax.random.key(1), (36, 32, 32, 3))
  labels = jnp.arange(36) % 10
  chunked = models.get_model(name, kernel_grad_chunk_size=8, **kwargs)
  plain = models.get_model(name, kernel_grad_chunk_size=None, **kwargs)
  variables = jax.jit(lambda: plain.init(jax.random.key(0), images[:1],
                                         train=False))()

  def grads(model):
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, images,
                              train=True, mutable=["batch_stats"])
      return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(36), labels])

    return jax.jit(jax.grad(loss))(variables["params"])

  for got, want in zip(jax.tree.leaves(grads(chunked)),
                       jax.tree.leaves(grads(plain))):
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_forward_mode_needs_xla_kernel_gradient():
  images = jax.random.normal(jax.random.key(1), (32, 32, 32, 3))
  plain = models.get_model("resnet20", depth=8, kernel_grad_chunk_size=None)
  variables = plain.init(jax.random.key(0), images, train=False)
  tangent = jax.tree.map(jnp.ones_like, variables["params"])

  def logits(model, params):
    return model.apply({**variables, "params": params}, images, train=False)

  jax.jvp(lambda p: logits(plain, p), (variables["params"],), (tangent,))
  chunked = plain.clone(kernel_grad_chunk_size=16)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda p: logits(chunked, p), (variables["params"],), (tangent,))


def _worker_loss(conv, kwargs):
  def loss(lhs, rhs):
    return jnp.sum(jnp.sin(conv(lhs, rhs, **kwargs)))

  return jax.value_and_grad(loss, argnums=(0, 1))


@pytest.mark.parametrize("shared_kernel", [False, True])
def test_vmap_over_workers_matches_xla(shared_kernel):
  lhs_shape, rhs_shape, kwargs, _ = CASES["stride_2"]
  workers = 3
  lhs, rhs = _operands((workers, *lhs_shape), (workers, *rhs_shape))
  in_axes = (0, None) if shared_kernel else (0, 0)
  rhs = rhs[0] if shared_kernel else rhs
  got = jax.jit(jax.vmap(_worker_loss(convolution.chunked_kernel_grad_conv(8),
                                      kwargs), in_axes))(lhs, rhs)
  want = jax.jit(jax.vmap(_worker_loss(lax.conv_general_dilated, kwargs),
                          in_axes))(lhs, rhs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_vmap_over_worker_kernels_unrolls_instead_of_grouping():
  lhs_shape, rhs_shape, kwargs, _ = CASES["stride_2"]
  workers = 3
  lhs, rhs = _operands((workers, *lhs_shape), (workers, *rhs_shape))

  def hlo(conv):
    return jax.jit(jax.vmap(_worker_loss(conv, kwargs))).lower(lhs, rhs).as_text()

  # XLA's batching rule: one grouped convolution per forward and gradient.
  assert re.search(r"feature_group_count = 3", hlo(lax.conv_general_dilated))
  text = hlo(convolution.chunked_kernel_grad_conv(8))
  assert "feature_group_count = 3" not in text
  # Per worker: forward, input gradient, and 24 / 8 kernel-gradient chunks.
  assert len(re.findall(r"stablehlo\.convolution", text)) == workers * (1 + 1 + 3)
