r"""Perturbation sources :math:`\zeta^k` of the extrapolated-SGD framework (paper §3.2).

Every worker :math:`k` takes its gradient at the extrapolated point
:math:`z^k_t = y_t - \hat\gamma_t \zeta^k_t`. A perturbation source computes
:math:`\zeta^k_{t+1}` at the end of step :math:`t`, from a
`PerturbationContext`, so no source needs memory of its own (see
:ref:`perturbation-timing`):

=============================== ================================================
source                          :math:`\zeta^k_{t+1}`
=============================== ================================================
`past_gradient`                 :math:`g^k_t` (EXTRAP-SGD, Algorithm 1)
``past_gradient("trust_ratio")`` :math:`g^k_t` scaled per tensor like a LARS step
`filterwise_noise`              :math:`\|y_j\| \xi_j / \|\xi_j\|` per filter, per worker
`smoothout_noise`               the same draw on every worker (SmoothOut)
`gradient_noise`                :math:`g^k_t - \bar g_t` (anisotropic)
=============================== ================================================

Random sources derive their keys from a seed, the step and the worker index
(see :ref:`randomness`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from extrap_optax._src import lars
from extrap_optax._src import norms
from extrap_optax._src import validation


class PerturbationContext(NamedTuple):
  r"""What a perturbation source may look at when forming :math:`\zeta^k_{t+1}`.

  Attributes:
    local_grads: :math:`g^k_t`, this worker's gradient at its extrapolated
      point.
    mean_grads: :math:`\bar g_t`, the gradient averaged over workers (equal to
      `local_grads` on the local steps of post-local SGD).
    params: :math:`y_t`, the shared point the step started from.
    next_params: :math:`y_{t+1}`, the shared point after the step, where
      :math:`\zeta` will be used.
    base_state: the base transformation's state before the step.
    next_base_state: the base transformation's state after the step.
    next_count: :math:`t + 1`, the step at which :math:`\zeta` will be used.
    worker_index: :math:`k`, this worker's index over the worker axes.
  """
  local_grads: optax.Updates
  mean_grads: optax.Updates
  params: optax.Params
  next_params: optax.Params
  base_state: optax.OptState
  next_base_state: optax.OptState
  next_count: jax.Array
  worker_index: jax.Array


class Perturbation(Protocol):
  r"""A perturbation source: a `PerturbationContext` to a direction :math:`\zeta`.

  Any callable of this signature is a source for `extrapolate`,
  `extrapolated_sgd` and `post_local_sgd`; the offset of the next step is
  :math:`-\hat\gamma_{t+1} \zeta`. It runs inside the jitted update.

  Examples:
    A custom source: the past gradient's sign.

    >>> import jax, jax.numpy as jnp, optax
    >>> import extrap_optax
    >>> def sign_of_gradient(context):
    ...   return jax.tree.map(jnp.sign, context.local_grads)
    >>> tx = extrap_optax.extrapolated_sgd(
    ...     0.5, perturbation=sign_of_gradient, extrapolation_rate=0.25,
    ...     momentum=0.0)
    >>> params = jnp.array([1.0, 1.0])
    >>> updates, state = tx.update(jnp.array([4.0, -2.0]), tx.init(params), params)
    >>> print(optax.apply_updates(params, updates).tolist())   # y_1 - 0.25 sign(g)
    [-1.25, 2.25]
  """

  def __call__(self, context: PerturbationContext) -> optax.Updates:
    r"""The direction :math:`\zeta^k_{t+1}`, a tree like the parameters."""


PAST_GRADIENT_SCALINGS = ("none", "trust_ratio")


def past_gradient(
    scaling: Literal["none", "trust_ratio"] = "none",
    *,
    weight_decay: float = 0.0,
    weight_decay_mask: lars.Mask | None = None,
    eps: float = 1e-8,
) -> Perturbation:
  r"""The past local mini-batch gradient (EXTRAP-SGD), raw or LARS-scaled.

  With :math:`g` the worker's local gradient :math:`g^k_t` and :math:`y` the
  shared point :math:`y_{t+1}` at which the perturbation will be used, per
  parameter tensor :math:`j`:

  .. math::

    \zeta_j = g_j \quad \text{(scaling="none")}, \qquad
    \zeta_j = \frac{\|y_j\|}{\|g_j\| + \lambda_j \|y_j\| + \epsilon} \, g_j
    \quad \text{(scaling="trust_ratio")},

  with :math:`\lambda_j` = `weight_decay` where `weight_decay_mask` is True
  and 0 elsewhere. As in LARC (`scale_by_larc`), a tensor with
  :math:`\|y_j\| = 0` or :math:`\|g_j\| = 0` is left unscaled,
  :math:`\zeta_j = g_j`.

  The paper leaves the scale of the extrapolation ambiguous (see
  :ref:`extrapolation-scale`). The paper's §3.1 and Remark 4.5 take the raw
  gradient with :math:`\hat\gamma \approx \gamma/K`,
  the learning rate of small-batch training ("none", the default, Algorithm
  1). App. C.1 tunes :math:`\hat\gamma` "by scaling the
  :math:`\tilde\gamma/K`", with :math:`\tilde\gamma` the LARS trust
  coefficient, which reads as an extrapolation sized like a LARS step: with
  "trust_ratio" and :math:`\hat\gamma = c\,\tilde\gamma/K`, the offset

  .. math::

    \delta_j = -c \, \frac{\tilde\gamma}{K} \,
      \frac{\|y_j\|}{\|g_j\| + \lambda_j \|y_j\|} \, g_j

  is the (unclipped) LARS step of the raw gradient, scaled by :math:`c/K`.
  The raw gradient is never decayed: :math:`\lambda` enters only the
  denominator, as in LARC's trust ratio. The norms are computed in at least
  float32; ζ has the gradient's dtype.

  **Choice**: :math:`\zeta` is formed from the local gradient as passed to
  `update`, after whatever the user chained before the optimizer on each
  worker, such as the LSTM's gradient clipping (see
  :ref:`extrapolated-gradient`).

  Args:
    scaling: "none" (ζ = g, default) or "trust_ratio" (ζ scaled per tensor as
      above).
    weight_decay: :math:`\lambda \ge 0` in the denominator of the trust
      ratio; ignored by "none". Pass the optimizer's coupled L2 coefficient.
    weight_decay_mask: which tensors have :math:`\lambda_j = \lambda`: a
      pytree of static bools like the params, one bool, or a callable params
      -> such a pytree; None means every tensor (the semantics of
      `scale_by_larc`). Pass the optimizer's mask (`extrap_sgd` does).
    eps: :math:`\epsilon \ge 0`, added to the denominator (LARC: 1e-8).

  Returns:
    A `Perturbation`.

  Raises:
    ValueError: for a `scaling` other than "none" or "trust_ratio", a negative
      `weight_decay` or `eps`, or (when ζ is formed) a `weight_decay_mask`
      whose structure does not match the params.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.1, Remark 4.5 and
    App. C.1.
    You et al., `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`__, 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> context = extrap_optax.PerturbationContext(
    ...     local_grads={"w": jnp.array([3.0, 4.0])}, mean_grads=None,
    ...     params=None, next_params={"w": jnp.array([0.0, 10.0])},
    ...     base_state=None, next_base_state=None, next_count=1, worker_index=0)
    >>> print(extrap_optax.past_gradient()(context)["w"].tolist())
    [3.0, 4.0]
    >>> scaled = extrap_optax.past_gradient("trust_ratio", eps=0.0)(context)
    >>> print(scaled["w"].tolist())   # ‖y‖ / ‖g‖ = 10 / 5
    [6.0, 8.0]
  """
  if scaling not in PAST_GRADIENT_SCALINGS:
    raise ValueError(
        f"`scaling` must be one of {PAST_GRADIENT_SCALINGS}, got {scaling!r}.")
  validation.check_non_negative("weight_decay", weight_decay)
  validation.check_non_negative("eps", eps)
  validation.check_mask("weight_decay_mask", weight_decay_mask)

  if scaling == "none":
    def direction(context: PerturbationContext) -> optax.Updates:
      return context.local_grads

    return direction

  def scaled(g: jax.Array, y: jax.Array, decayed: bool) -> jax.Array:
    wd = weight_decay if decayed else 0.0
    y_norm, g_norm = norms.norm(y), norms.norm(g)
    ratio = y_norm / (g_norm + wd * y_norm + eps)
    wide = g.astype(jnp.promote_types(g.dtype, ratio.dtype))
    out = jnp.where((y_norm != 0) & (g_norm != 0), wide * ratio, wide)
    return out.astype(g.dtype)

  def direction(context: PerturbationContext) -> optax.Updates:
    decay_tree = validation.resolve_mask(
        "weight_decay_mask", weight_decay_mask, context.next_params)
    return jax.tree.map(
        scaled, context.local_grads, context.next_params, decay_tree)

  return direction


def gradient_noise() -> Perturbation:
  r"""Anisotropic stochastic-gradient noise: the local minus the averaged gradient.

  .. math::

    \zeta^k_{t+1} = g^k_t - \bar g_t.

  :math:`\bar g_t` is the averaged gradient that the step has just computed,
  so this source adds no communication to mini-batch SGD.

  Returns:
    A `Perturbation`.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.2.
    Kleinberg et al., `An Alternative View: When Does SGD Escape Local
    Minima? <https://arxiv.org/abs/1802.06175>`__, ICML 2018.
    Haruki et al., `Gradient Noise Convolution (GNC): Smoothing Loss Function
    for Distributed Large-Batch SGD <https://arxiv.org/abs/1906.10822>`__,
    2019.

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> context = extrap_optax.PerturbationContext(
    ...     local_grads=jnp.array([3.0, 1.0]), mean_grads=jnp.array([2.0, 2.0]),
    ...     params=None, next_params=None, base_state=None,
    ...     next_base_state=None, next_count=1, worker_index=0)
    >>> print(extrap_optax.gradient_noise()(context).tolist())
    [1.0, -1.0]
  """

  def direction(context: PerturbationContext) -> optax.Updates:
    return jax.tree.map(jnp.subtract, context.local_grads, context.mean_grads)

  return direction


def _filterwise_scaled(
    raw: jax.Array, param: jax.Array, small_params: str) -> jax.Array:
  """Scales raw noise so that each filter j has the norm of the parameter's filter j.

  A filter is a slice along the last axis (Flax kernels are HWIO and [in, out]).
  """
  if param.ndim >= 2:
    axes = tuple(range(param.ndim - 1))
    param_norm = jnp.sqrt(jnp.sum(jnp.square(param.astype(raw.dtype)), axes, keepdims=True))
    raw_norm = jnp.sqrt(jnp.sum(jnp.square(raw), axes, keepdims=True))
    scale = jnp.where(raw_norm > 0, param_norm / jnp.where(raw_norm > 0, raw_norm, 1.0), 0.0)
    return raw * scale
  if small_params == "elementwise":
    return jnp.abs(param.astype(raw.dtype)) * jnp.sign(raw)
  return jnp.zeros_like(raw)


GENERATORS = ("threefry", "counter_hash")


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection that mixes every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _counter_hash_word(seed, count, worker, leaf: int) -> jax.Array:
  """One uint32 per (seed, step, worker, tensor): the stream's key."""
  word = _fmix32(jnp.asarray(seed).astype(jnp.uint32) ^ jnp.uint32(0x9E3779B9))
  for value, salt in ((count, 0x85EBCA77), (worker, 0xC2B2AE3D), (leaf, 0x27D4EB2F)):
    word = _fmix32(word ^ (jnp.asarray(value).astype(jnp.uint32)
                           * jnp.uint32(salt)))
  return word


def _counter_hash_uniform(word: jax.Array, shape, dtype) -> jax.Array:
  """U[-1, 1) from fmix32(fmix32(i ^ word) + word) of the element index i.

  23 random mantissa bits per element, as `jax.random.uniform` in float32.
  """
  size = int(np.prod(shape, dtype=np.int64))
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits = _fmix32(_fmix32(index ^ word) + word)
  one_to_two = jax.lax.bitcast_convert_type(
      (bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
  return (2.0 * one_to_two - 3.0).astype(dtype)


def _counter_hash_normal(word: jax.Array, shape, dtype) -> jax.Array:
  """N(0, 1) by Box-Muller from two counter-hash uniforms."""
  u1 = 0.5 * (1.0 - _counter_hash_uniform(word, shape, jnp.float32))  # (0, 1]
  u2 = 0.5 * (1.0 + _counter_hash_uniform(_fmix32(word ^ jnp.uint32(0x165667B1)),
                                          shape, jnp.float32))
  return (jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * np.pi * u2)).astype(dtype)


def _check_seed(seed: int | jax.Array) -> None:
  is_int = isinstance(seed, int) and not isinstance(seed, bool)
  is_int_array = (hasattr(seed, "dtype") and jnp.ndim(seed) == 0
                  and jnp.issubdtype(seed.dtype, jnp.integer))
  if not (is_int or is_int_array):
    raise ValueError(
        f"`seed` must be an int or an integer scalar array (as "
        f"`optax.inject_hyperparams` passes it), got {seed!r}.")


def filterwise_noise(
    seed: int | jax.Array = 0,
    *,
    distribution: Literal["uniform", "gaussian"] = "uniform",
    shared_across_workers: bool = False,
    small_params: Literal["none", "elementwise"] = "none",
    generator: Literal["threefry", "counter_hash"] = "threefry",
) -> Perturbation:
  r"""Isotropic noise scaled filter-wise by the weights (Li et al., 2017).

  For the :math:`j`-th filter of a kernel, with :math:`\xi` drawn from
  :math:`U(-1, 1)` or :math:`N(0, 1)`,

  .. math::

    \zeta_j = \|y_j\| \, \frac{\xi_j}{\|\xi_j\|},

  so :math:`\|\zeta_j\| = \|y_j\|` and the extrapolation moves each filter
  by :math:`\hat\gamma \|y_j\|`. **Choice**: the filter axis is the last one
  (the Flax convention: convolutions HWIO, dense kernels [in, out]; PyTorch's
  is axis 0). See :ref:`filterwise-noise`.

  Args:
    seed: the base seed, an int or an integer scalar array (so that
      ``optax.inject_hyperparams`` may hold it; the same value gives the same
      draws). Worker :math:`k` at step :math:`t` uses
      ``fold_in(fold_in(key(seed), t), k)``: nothing random is stored (see
      :ref:`randomness`).
    distribution: "uniform" (:math:`U(-1, 1)`, the paper's "uniform noise") or
      "gaussian".
    shared_across_workers: draw one :math:`\zeta` for all workers (SmoothOut,
      Wen et al., 2018) by leaving the worker index out of the key.
    small_params: parameters with fewer than 2 dimensions (biases, norm
      scales): "none" (the default, **choice** following Li et al., 2017) leaves
      them unperturbed; "elementwise" uses
      :math:`\zeta_i = |y_i| \operatorname{sign}(\xi_i)`.
    generator: "threefry" (the default: JAX's threefry2x32 keys,
      ``fold_in(fold_in(key(seed), t), k)`` and one split per tensor) or
      "counter_hash": element :math:`i` of tensor :math:`j` is a hash of
      :math:`(i, \text{seed}, t, k, j)` (MurmurHash3's finalizer applied
      twice), computed inside the update's fused loop at about the cost of
      one memory pass, where threefry costs tens (see :ref:`randomness`).
      The two give different streams (same distribution, not the same
      draws); "counter_hash" is a statistical, not a cryptographic, generator
      and repeats after :math:`2^{32}` elements of one tensor.

  Returns:
    A `Perturbation`.

  Raises:
    ValueError: for an unknown `distribution` or `small_params`, or a `seed`
      that is neither an int nor an integer scalar array.

  References:
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.2.
    Li et al., `Visualizing the Loss Landscape of Neural Nets
    <https://arxiv.org/abs/1712.09913>`__, 2017.

  Examples:
    Every filter (column) of the noise has the norm of the kernel's filter;
    the bias gets none.

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import extrap_optax
    >>> y = {"kernel": jnp.array([[3.0, 0.0], [4.0, 2.0]]), "bias": jnp.ones(2)}
    >>> context = extrap_optax.PerturbationContext(
    ...     local_grads=None, mean_grads=None, params=None, next_params=y,
    ...     base_state=None, next_base_state=None, next_count=1, worker_index=0)
    >>> zeta = extrap_optax.filterwise_noise(seed=0)(context)
    >>> print(np.linalg.norm(zeta["kernel"], axis=0).round(4))
    [5. 2.]
    >>> print(zeta["bias"].tolist())
    [0.0, 0.0]
  """
  if distribution not in ("uniform", "gaussian"):
    raise ValueError(
        f"`distribution` must be 'uniform' or 'gaussian', got {distribution!r}.")
  if small_params not in ("none", "elementwise"):
    raise ValueError(
        f"`small_params` must be 'none' or 'elementwise', got {small_params!r}.")
  if generator not in GENERATORS:
    raise ValueError(
        f"`generator` must be one of {GENERATORS}, got {generator!r}.")
  _check_seed(seed)

  if generator == "counter_hash":
    sample = (_counter_hash_uniform if distribution == "uniform"
              else _counter_hash_normal)

    def counter_hash_direction(context: PerturbationContext) -> optax.Updates:
      worker = 0 if shared_across_workers else context.worker_index
      leaves, treedef = jax.tree.flatten(context.next_params)
      noise = []
      for j, p in enumerate(leaves):
        raw = sample(_counter_hash_word(seed, context.next_count, worker, j),
                     p.shape, jnp.promote_types(p.dtype, jnp.float32))
        noise.append(_filterwise_scaled(raw, p, small_params).astype(p.dtype))
      return jax.tree.unflatten(treedef, noise)

    return counter_hash_direction

  def draw(key: jax.Array, param: jax.Array) -> jax.Array:
    dtype = jnp.promote_types(param.dtype, jnp.float32)
    if distribution == "uniform":
      return jax.random.uniform(key, param.shape, dtype, minval=-1.0, maxval=1.0)
    return jax.random.normal(key, param.shape, dtype)

  def direction(context: PerturbationContext) -> optax.Updates:
    key = jax.random.fold_in(jax.random.key(seed), context.next_count)
    if not shared_across_workers:
      key = jax.random.fold_in(key, context.worker_index)
    leaves, treedef = jax.tree.flatten(context.next_params)
    keys = jax.random.split(key, max(len(leaves), 1))
    noise = [
        _filterwise_scaled(draw(k, p), p, small_params).astype(p.dtype)
        for k, p in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)

  return direction


def smoothout_noise(
    seed: int | jax.Array = 0,
    *,
    distribution: Literal["uniform", "gaussian"] = "uniform",
    small_params: Literal["none", "elementwise"] = "none",
    generator: Literal["threefry", "counter_hash"] = "threefry",
) -> Perturbation:
  r"""SmoothOut: filter-wise noise, one draw shared by all workers.

  `filterwise_noise` with ``shared_across_workers=True``: every worker
  perturbs the shared point by the same :math:`\zeta_t`.

  Args:
    seed: the base seed; step :math:`t` uses ``fold_in(key(seed), t)``.
    distribution: "uniform" or "gaussian", as in `filterwise_noise`.
    small_params: "none" or "elementwise", as in `filterwise_noise`.
    generator: "threefry" or "counter_hash", as in `filterwise_noise`.

  Returns:
    A `Perturbation`.

  References:
    Wen et al., `SmoothOut: Smoothing Out Sharp Minima to Improve
    Generalization in Deep Learning <https://arxiv.org/abs/1805.07898>`__,
    2018.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, §3.2.

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> y = jnp.ones((3, 2))
    >>> def noise_of(worker):
    ...   return extrap_optax.smoothout_noise(seed=1)(extrap_optax.PerturbationContext(
    ...       local_grads=None, mean_grads=None, params=None, next_params=y,
    ...       base_state=None, next_base_state=None, next_count=1,
    ...       worker_index=worker))
    >>> bool(jnp.array_equal(noise_of(0), noise_of(5)))   # one draw for all
    True
  """
  return filterwise_noise(
      seed, distribution=distribution, shared_across_workers=True,
      small_params=small_params, generator=generator)
