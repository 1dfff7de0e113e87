"""The parameter trees and models the benchmarks run on.

The models come from `experiments.models` (the Flax models of the paper's
tasks); this module only builds parameters, batches and jitted train steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import models

LARGE_TREE_BLOCKS = 8
LARGE_TREE_WIDTH = 1024


def resnet20(num_classes: int = 10, **kwargs):
  """The ResNet-20 module and its initial variables (params and batch_stats).

  Args:
    num_classes: classes of the head.
    **kwargs: further `experiments.models.ResNet` attributes.
  """
  model = models.get_model("resnet20", num_classes=num_classes, **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  return model, variables


def large_tree(blocks: int = LARGE_TREE_BLOCKS, width: int = LARGE_TREE_WIDTH):
  """A Transformer-like float32 tree, 100.7M parameters with the defaults.

  Per block: four width x width attention matrices, a width x 4·width and a
  4·width x width feed-forward matrix, and vectors (biases and norm scales),
  which get no weight decay and no noise. About 403 MB per buffer.
  """
  rng = np.random.default_rng(0)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02)

  tree = {}
  for b in range(blocks):
    tree[f"block{b}"] = {
        **{f"attn_{n}": normal(width, width) for n in "qkvo"},
        "ffn_in": normal(width, 4 * width), "ffn_out": normal(4 * width, width),
        "ffn_bias": normal(4 * width), "norm_scale": normal(width),
    }
  return tree


def num_params(tree: Any) -> int:
  """The number of scalars in a tree."""
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def tree_bytes(tree: Any) -> int:
  """Bytes of all array leaves of a tree (optimizer state, parameters)."""
  return sum(int(x.nbytes) for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def cifar_batch(batch_size: int, seed: int = 0):
  """A random CIFAR-shaped batch (NHWC float32 images, int labels)."""
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((batch_size, 32, 32, 3), np.float32),
          "label": rng.integers(0, 10, (batch_size,)).astype(np.int32)}


def resnet_loss_fn(model):
  """loss(params, batch_stats, batch) -> (loss, new batch_stats), train-mode BN."""

  def loss_fn(params, batch_stats, batch):
    logits, mutated = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, mutated["batch_stats"]

  return loss_fn


def resnet_train_step(model, tx):
  """One worker's train step: (params, batch_stats, opt_state, batch) -> same + loss.

  Written for one worker; run it jitted directly or through `Workers.map`.
  """
  loss_fn = resnet_loss_fn(model)

  def step(params, batch_stats, opt_state, batch):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return step


def table1_steps(epochs: int = 300, dataset: int = 50_000, workers: int = 32,
                 local_batch: int = 256) -> int:
  """Steps of the paper's Table-1 CIFAR-10 run (last partial batch dropped)."""
  return epochs * (dataset // (workers * local_batch))
