"""Perturbation sources ζ^k of the extrapolated-SGD framework (paper §3.2).

Every worker k evaluates its gradient at the extrapolated point
z^k_t = y_t − γ̂_t · ζ^k_t. A perturbation source computes ζ^k_{t+1} at the end of
step t, when the local gradient g^k_t, the averaged gradient ḡ_t and the new shared
point y_{t+1} are all at hand. Computing it there (instead of at the start of the
next step) is why no source needs memory of its own: the anisotropic source needs
last step's ḡ, which is still in hand, and no extra collective.

| source                         | ζ^k_{t+1}                                             |
| ------------------------------ | ----------------------------------------------------- |
| `past_gradient`                | g^k_t (EXTRAP-SGD, Algorithm 1)                       |
| `past_gradient("trust_ratio")` | ‖y_j‖ · g^k_j / (‖g^k_j‖ + λ_j‖y_j‖ + ε) per tensor j |
| `filterwise_noise`             | ‖y_j‖ · ξ_j / ‖ξ_j‖ per filter j, ξ per worker        |
| `filterwise_noise(shared)`     | the same draw on every worker (SmoothOut)             |
| `gradient_noise`               | g^k_t − ḡ_t (anisotropic)                             |

Randomness is derived from a seed, the step count and the worker index with
`jax.random.fold_in`, so nothing random is stored per worker and a run is
reproducible from its step number alone.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import lars
from extrap_optax._src import validation


class PerturbationContext(NamedTuple):
  """What a perturbation source may look at when forming ζ^k_{t+1}.

  Attributes:
    local_grads: g^k_t, this worker's gradient at its extrapolated point.
    mean_grads: ḡ_t, the gradient averaged over workers (equal to `local_grads`
      on local steps of post-local SGD).
    params: y_t, the shared point the step started from.
    next_params: y_{t+1}, the shared point after the step.
    base_state: the base transformation's state before the step.
    next_base_state: the base transformation's state after the step.
    next_count: t + 1, the step at which ζ will be used.
    worker_index: k, this worker's index over the worker axes.
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
  """Maps a `PerturbationContext` to the perturbation direction ζ (a params-like tree)."""

  def __call__(self, context: PerturbationContext) -> optax.Updates:
    ...


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

  The paper leaves the scale of the extrapolation ambiguous. §3.1 and
  Remark 4.5 take the raw gradient with :math:`\hat\gamma \approx \gamma/K`,
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

  **Choice** (raw gradient): ζ is formed from the local gradient after
  whatever the user chained before the optimizer on each worker (such as the
  LSTM's gradient clipping).

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
    Lin et al., Extrapolation for Large-batch Training in Deep Learning,
    ICML 2020, §3.1, Remark 4.5 and App. C.1.
    You et al., `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.
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
    y_norm, g_norm = lars._norm(y), lars._norm(g)
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
  """ζ^k_{t+1} = g^k_t − ḡ_t: anisotropic stochastic-gradient noise.

  ḡ_t is the averaged gradient that the step has just computed, so this source adds
  no communication to mini-batch SGD (Kleinberg et al., 2018; Haruki et al., 2019).
  """

  def direction(context: PerturbationContext) -> optax.Updates:
    return jax.tree.map(jnp.subtract, context.local_grads, context.mean_grads)

  return direction


def _filterwise_scaled(
    raw: jax.Array, param: jax.Array, small_params: str) -> jax.Array:
  """Scales raw noise so that each filter j has the norm ‖param_j‖.

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


def filterwise_noise(
    seed: int = 0,
    *,
    distribution: Literal["uniform", "gaussian"] = "uniform",
    shared_across_workers: bool = False,
    small_params: Literal["none", "elementwise"] = "none",
) -> Perturbation:
  """Isotropic noise scaled filter-wise by the weights (Li et al., 2017).

  For the j-th filter of a kernel, ζ_j = ‖y_j‖ · ξ_j / ‖ξ_j‖ with ξ drawn from
  U(−1, 1) or N(0, 1), so ‖ζ_j‖ = ‖y_j‖ and the extrapolation moves each filter by
  γ̂·‖y_j‖. The filter axis is the last one (Flax convention: conv HWIO and dense
  [in, out]; PyTorch's is axis 0).

  Args:
    seed: base seed. Worker k at step t uses
      `fold_in(fold_in(key(seed), t), k)`; nothing random is stored.
    distribution: "uniform" (U(−1, 1), the paper's "uniform noise") or "gaussian".
    shared_across_workers: draw one ζ for all workers (SmoothOut, Wen et al. 2018)
      by leaving the worker index out of the key.
    small_params: parameters with fewer than 2 dimensions (biases, norm scales):
      "none" (default, **choice** following Li et al. 2017) leaves them unperturbed;
      "elementwise" uses ζ_i = |y_i|·sign(ξ_i).

  Returns:
    A `Perturbation`.
  """
  if distribution not in ("uniform", "gaussian"):
    raise ValueError(
        f"`distribution` must be 'uniform' or 'gaussian', got {distribution!r}.")
  if small_params not in ("none", "elementwise"):
    raise ValueError(
        f"`small_params` must be 'none' or 'elementwise', got {small_params!r}.")
  if not isinstance(seed, int):
    raise ValueError(f"`seed` must be a Python int, got {seed!r}.")

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
    seed: int = 0,
    *,
    distribution: Literal["uniform", "gaussian"] = "uniform",
    small_params: Literal["none", "elementwise"] = "none",
) -> Perturbation:
  """SmoothOut (Wen et al., 2018): filter-wise noise, one draw shared by all workers."""
  return filterwise_noise(
      seed, distribution=distribution, shared_across_workers=True,
      small_params=small_params)
