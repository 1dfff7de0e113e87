"""Language modelling: WikiText-2 with the 2-layer LSTM, validation perplexity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import extrap_optax
from experiments import models
from experiments import worker_arrays
from experiments.input_pipeline import common
from experiments.input_pipeline import wikitext2
from experiments.tasks import synthetic
from experiments.tasks.base import Batch
from experiments.tasks.base import data_dir
from experiments.tasks.base import Task


class LanguageModel(Task):
  """WikiText-2 with the 2-layer LSTM; perplexity on the validation stream.

  The hidden state is per worker and carried between consecutive BPTT
  segments (detached); it restarts from zero at each epoch, so it is a function
  of the step and of the checkpointed state only.
  """

  throughput_unit = "tok/s"
  main_metric = "valid_perplexity"
  higher_is_better = False

  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    self.config = config
    self.workers = workers
    train, valid, vocab_size = self._load(config)
    local_batch = config.workers.local_batch_size
    self.batcher = wikitext2.LMBatcher(train, workers.num_workers, local_batch,
                                       config.data.bptt)
    self.steps_per_epoch = self.batcher.steps_per_epoch
    self.examples_per_step = (workers.num_workers * local_batch
                              * config.data.bptt)
    self.model = models.get_model("lstm", vocab_size=vocab_size,
                                  **config.model.kwargs.to_dict())
    self.local_batch = local_batch
    eval_columns = config.data.eval_batch_size
    length = len(valid) // eval_columns
    self.valid = valid[:length * eval_columns].reshape(eval_columns, length)
    self._eval_step = jax.jit(self._eval_step_fn)

  @staticmethod
  def check_data(config: ml_collections.ConfigDict) -> None:
    if config.data.source != "synthetic":
      common.resolve_data_dir(data_dir(config), wikitext2.SUBDIR,
                              wikitext2.MANUAL_CONTENTS)

  @staticmethod
  def _load(config) -> tuple[np.ndarray, np.ndarray, int]:
    if config.data.source == "synthetic":
      return synthetic.token_streams(config)
    train, valid, _, vocab = wikitext2.load_wikitext2(data_dir(config))
    if config.data.train_size:
      train = train[:config.data.train_size]
    if config.data.eval_size:
      valid = valid[:config.data.eval_size]
    return train, valid, len(vocab)

  def init(self, rng):
    carry = self.model.initial_carry(self.local_batch)
    tokens = jnp.zeros((self.local_batch, self.config.data.bptt), jnp.int32)
    params = self.model.init(rng, tokens, carry, train=False)["params"]
    return params, {"carry": carry}

  def loss(self, params, model_state, batch, rng, step):
    inputs, targets = batch
    fresh = step % self.steps_per_epoch == 0
    carry = jax.tree.map(lambda c: jnp.where(fresh, jnp.zeros_like(c), c),
                         model_state["carry"])
    logits, carry = self.model.apply({"params": params}, inputs, carry,
                                     train=True, rngs={"dropout": rng})
    loss = models.language_model_loss(logits, targets)
    carry = jax.lax.stop_gradient(carry)
    return loss, ({"carry": carry},
                  {"online_train_perplexity": jnp.exp(loss)})

  def train_batch(self, step: int) -> Batch:
    return worker_arrays.place(self.workers, self.batcher.batch(step))

  def _eval_step_fn(self, params, carry, inputs, targets):
    logits, carry = self.model.apply({"params": params}, inputs, carry,
                                     train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets)
    return jnp.sum(losses), carry

  def evaluate(self, params, model_state, *, final: bool = True):
    # Evaluation starts from a fresh hidden state; every one measures all.
    del model_state, final
    bptt = self.config.data.bptt
    carry = self.model.initial_carry(self.valid.shape[0])
    total, count = 0.0, 0
    for start in range(0, self.valid.shape[1] - 1, bptt):
      length = min(bptt, self.valid.shape[1] - 1 - start)
      inputs = self.valid[:, start:start + length]
      targets = self.valid[:, start + 1:start + 1 + length]
      loss, carry = self._eval_step(params, carry, inputs, targets)
      total += float(loss)
      count += targets.size
    mean = total / count
    return {"valid_loss": mean, "valid_perplexity": float(np.exp(mean))}
