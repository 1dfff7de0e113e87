"""LARS as NVIDIA apex LARC, the variant the paper used (You et al., 2017).

The paper (App. C) applies LARS "as in NVIDIA apex" with the default trust
coefficient 0.02; apex's `LARC` wraps a `torch.optim.SGD` and, per parameter
tensor, rescales the gradient before the wrapped optimizer's momentum step. This
module reproduces that computation as an optax transformation (see :ref:`lars`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from extrap_optax._src import norms
from extrap_optax._src import validation

Mask = Any | Callable[[optax.Params], Any]


class ScaleByLarcState(NamedTuple):
  """The state of `scale_by_larc`.

  Attributes:
    count: number of updates taken so far (int32); the learning-rate schedule
      used for clipping is evaluated at it, as in `optax.scale_by_learning_rate`.
  """
  count: jax.Array


def matrices_only(params: optax.Params) -> Any:
  """True for parameter arrays with at least 2 dimensions (kernels, embeddings).

  The library's default weight-decay mask. **Choice**: biases and
  normalisation scales and offsets (fewer than 2 dimensions) are not decayed,
  following He et al. (2016) as the paper does, by shape rather than by name
  (see :ref:`weight-decay`).

  Args:
    params: a pytree of arrays.

  Returns:
    A pytree of Python bools with the structure of `params`.

  References:
    He et al., `Deep Residual Learning for Image Recognition
    <https://arxiv.org/abs/1512.03385>`__, CVPR 2016.

  Examples:
    >>> import jax.numpy as jnp
    >>> import extrap_optax
    >>> params = {"kernel": jnp.ones((3, 3, 16, 32)), "bias": jnp.zeros(32),
    ...           "scale": jnp.ones(32)}
    >>> extrap_optax.matrices_only(params)
    {'bias': False, 'kernel': True, 'scale': False}
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def scale_by_larc(
    learning_rate: optax.ScalarOrSchedule,
    *,
    trust_coefficient: float = 0.02,
    weight_decay: float = 0.0,
    weight_decay_mask: Mask | None = None,
    clip: bool = True,
    eps: float = 1e-8,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Coupled weight decay and LARC scaling, exactly as NVIDIA apex `LARC`.

  For every parameter tensor :math:`w` with gradient :math:`g` (the gradient
  already averaged over workers, a **choice**: see :ref:`lars`), with :math:`\gamma_t` the
  learning rate of this step, :math:`\tilde\gamma` the trust coefficient and
  :math:`\lambda` the weight decay:

  .. math::

    r = \frac{\tilde\gamma \, \|w\|}{\|g\| + \lambda \|w\| + \epsilon},
    \qquad
    s = \min(r / \gamma_t, 1) \ \text{(clip)} \quad\text{or}\quad s = r,
    \qquad
    d = s \, (g + \lambda w),

  so that, after the momentum step scales by :math:`\gamma_t`, the effective
  per-tensor learning rate is :math:`\min(r, \gamma_t)` (clip) or
  :math:`r \gamma_t` (no clip). :math:`\|g\|` is the norm of the raw gradient,
  before weight decay. As in apex, a tensor with :math:`\|w\| = 0` or
  :math:`\|g\| = 0` gets neither scaling nor weight decay: :math:`d = g`
  (apex adds the weight decay inside the same ``if``).

  Chain it before the momentum and the learning rate, as apex wraps
  ``torch.optim.SGD(..., weight_decay=0)``::

    optax.chain(
        scale_by_larc(lr, weight_decay=1e-4, weight_decay_mask=matrices_only),
        optax.trace(decay=0.9, nesterov=True),
        optax.scale_by_learning_rate(lr))

  which is what `larc_sgd` builds. The step count in the state advances by one
  per update, like the count of `optax.scale_by_learning_rate`, so a schedule
  is evaluated at the same step by both and the clip uses the learning rate of
  the step being taken.

  Masks are a pytree of static bools with the structure of the params, a
  single bool for every tensor, or a callable params -> such a pytree; True
  where it applies, and None means True. (Under `optax.inject_hyperparams`
  name a callable mask in ``static_args``, or it is taken for a schedule.)

  * `weight_decay_mask`: tensors outside it have :math:`\lambda = 0`, both in
    the added term and in the denominator of :math:`r` (an apex parameter group
    with ``weight_decay=0``).
  * `mask`: tensors outside it get no LARC scaling, only the plain coupled
    weight decay :math:`d = g + \lambda w` (per `weight_decay_mask`), as
    `optax.lars` treats tensors outside its ``trust_ratio_mask``. apex itself
    has no such mask: it scales every tensor.

  This is NOT `optax.lars` (optax 0.2.8), which chains
  ``add_decayed_weights -> scale_by_trust_ratio -> scale_by_learning_rate ->
  trace``. The differences:

  * trust ratio: optax uses :math:`\tilde\gamma \|w\| / (\|g + \lambda w\| +
    \epsilon)`, the norm of the already decayed update with ``eps=0`` by
    default; LARC uses :math:`\|g\| + \lambda\|w\| + 10^{-8}`.
  * clipping: optax never clips; LARC (``clip=True``) caps the per-tensor
    learning rate at :math:`\gamma_t`.
  * momentum: optax accumulates momentum on the learning-rate-scaled update
    (so a changing learning rate acts on the new term only); LARC, like
    `torch.optim.SGD`, accumulates the unscaled update and multiplies by
    :math:`\gamma_t` afterwards.
  * zero norms: optax still adds the weight decay and uses ratio 1 when
    :math:`\|w\|` or :math:`\|g + \lambda w\|` is zero; LARC skips both when
    :math:`\|w\|` or :math:`\|g\|` is zero.
  * defaults: optax ``trust_coefficient=0.001``, ``nesterov=False``; LARC
    0.02 (apex and the paper), Nesterov in the paper.

  Args:
    learning_rate: the learning rate :math:`\gamma_t` of the SGD step that
      follows (float or `optax.Schedule` of the step count). Only the clip
      uses it; pass the same value as to `optax.scale_by_learning_rate`.
    trust_coefficient: :math:`\tilde\gamma`; the paper tunes it in
      {0.01, 0.02, 0.03}.
    weight_decay: coupled L2 coefficient :math:`\lambda` (1e-4 for ResNet-20
      in the paper).
    weight_decay_mask: which tensors are decayed (see above).
    clip: apex's clipping mode, :math:`\min(r/\gamma_t, 1)`; False gives
      apex's scaling mode, :math:`r`.
    eps: added to the denominator of :math:`r` (apex: 1e-8).
    mask: which tensors get the LARC scaling (see above).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` requires
    `params` (and ignores other keyword arguments, as optax's optimizers do).

  References:
    You et al., `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`__, 2017.
    NVIDIA apex, `apex/parallel/LARC.py
    <https://github.com/NVIDIA/apex/blob/master/apex/parallel/LARC.py>`__.
    Lin et al., `Extrapolation for Large-batch Training in Deep Learning
    <https://arxiv.org/abs/2006.05720>`__, ICML 2020, App. C.

  Examples:
    One tensor, trust ratio :math:`r = 0.02 \cdot 5 / 50 = 0.002`, clipped at
    :math:`\gamma = 0.1`: the gradient is scaled by :math:`r / \gamma = 0.02`.

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import extrap_optax
    >>> tx = extrap_optax.scale_by_larc(0.1, trust_coefficient=0.02)
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([30.0, 40.0])
    >>> d, _ = tx.update(g, tx.init(w), w)
    >>> print(np.asarray(d).round(4))
    [0.6 0.8]
  """
  validation.check_non_negative("learning_rate", learning_rate)
  validation.check_non_negative("trust_coefficient", trust_coefficient)
  validation.check_non_negative("weight_decay", weight_decay)
  validation.check_non_negative("eps", eps)
  validation.check_mask("weight_decay_mask", weight_decay_mask)
  validation.check_mask("mask", mask)

  def init_fn(params):
    validation.resolve_mask("weight_decay_mask", weight_decay_mask, params)
    validation.resolve_mask("mask", mask, params)
    return ScaleByLarcState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args  # for chains with transformations that take them
    if params is None:
      raise ValueError(
          "scale_by_larc needs the current parameters (the norms ||w|| and the "
          "weight decay use them): call `update(grads, state, params)`.")
    decay_tree = validation.resolve_mask(
        "weight_decay_mask", weight_decay_mask, params)
    larc_tree = validation.resolve_mask("mask", mask, params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def leaf(g, w, decayed, scaled):
      wd = weight_decay if decayed else 0.0
      if not scaled:
        return g + wd * w
      w_norm, g_norm = norms.norm(w), norms.norm(g)
      ratio = trust_coefficient * w_norm / (g_norm + w_norm * wd + eps)
      if clip:
        # A zero learning rate gives ratio/0 = inf, so the factor is 1, as
        # with apex's tensor division.
        ratio = jnp.minimum(ratio / lr, 1.0)
      larc = (g + wd * w) * ratio.astype(g.dtype)
      return jnp.where((w_norm != 0) & (g_norm != 0), larc, g)

    updates = jax.tree.map(leaf, updates, params, decay_tree, larc_tree)
    return updates, ScaleByLarcState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def larc_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    trust_coefficient: float = 0.02,
    weight_decay: float = 0.0,
    weight_decay_mask: Mask | None = None,
    clip: bool = True,
    eps: float = 1e-8,
    mask: Mask | None = None,
) -> optax.GradientTransformation:
  r"""SGD with momentum under apex LARC: ``LARC(torch.optim.SGD(...))``.

  .. math::

    d_t = \mathrm{LARC}(g_t, w_t), \quad
    b_t = u\, b_{t-1} + d_t, \quad
    w_{t+1} = w_t - \gamma_t (d_t + u\, b_t) \ \text{(Nesterov)}
    \ \text{or}\ w_t - \gamma_t b_t,

  the PyTorch momentum convention (see :ref:`momentum-convention`) with
  `scale_by_larc`
  giving :math:`d_t`. Equal to apex ``LARC(torch.optim.SGD(params, lr,
  momentum, nesterov=nesterov, weight_decay=weight_decay),
  trust_coefficient, clip, eps)`` when the torch parameter groups carry the
  weight decay of `weight_decay_mask`.

  Args:
    learning_rate: :math:`\gamma_t`, a float or an `optax.Schedule`.
    momentum: :math:`u` in [0, 1).
    nesterov: Nesterov momentum (the paper's setting).
    trust_coefficient: see `scale_by_larc`.
    weight_decay: see `scale_by_larc`.
    weight_decay_mask: see `scale_by_larc`, except that None (the default)
      means `matrices_only`: no decay on tensors with fewer than 2 dimensions
      (biases, normalisation parameters; see :ref:`weight-decay`). Pass True
      to decay every tensor. (The default is not the callable itself because
      `optax.inject_hyperparams` would take it for a schedule.)
    clip: see `scale_by_larc`.
    eps: see `scale_by_larc`.
    mask: see `scale_by_larc`.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` requires
    `params` (and ignores other keyword arguments, as optax's optimizers do).

  Raises:
    ValueError: for a `momentum` outside [0, 1) or a negative coefficient
      (named).

  References:
    You et al., `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`__, 2017.
    NVIDIA apex, `apex/parallel/LARC.py
    <https://github.com/NVIDIA/apex/blob/master/apex/parallel/LARC.py>`__.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax
    >>> import extrap_optax
    >>> tx = extrap_optax.larc_sgd(0.1, momentum=0.9, trust_coefficient=0.02)
    >>> params = {"kernel": jnp.array([[3.0], [4.0]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"kernel": jnp.array([[30.0], [40.0]])},
    ...                            state, params)
    >>> print(np.asarray(updates["kernel"].ravel()).round(4))   # −γ(1 + u)·d
    [-0.114 -0.152]
  """
  validation.check_momentum(momentum)
  return optax.chain(
      scale_by_larc(
          learning_rate,
          trust_coefficient=trust_coefficient,
          weight_decay=weight_decay,
          weight_decay_mask=(
              matrices_only if weight_decay_mask is None else weight_decay_mask),
          clip=clip,
          eps=eps,
          mask=mask),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  )
