"""Translation: Multi30k en-de with the Transformer; validation loss and test BLEU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import extrap_optax
from experiments import models
from experiments import worker_arrays
from experiments.input_pipeline import bleu
from experiments.input_pipeline import common
from experiments.input_pipeline import multi30k
from experiments.tasks import synthetic
from experiments.tasks.base import Batch
from experiments.tasks.base import data_dir
from experiments.tasks.base import Task


class Translation(Task):
  """Multi30k en-de with the Transformer; validation loss and test BLEU.

  An evaluation measures `valid_loss` (token-level cross-entropy without
  label smoothing, teacher-forced) and `valid_perplexity` on the validation
  set, and `test_bleu` by decoding the test set, which costs several times
  more; with `data.bleu_at_every_eval=False` the test set is decoded at the
  run's last evaluation only.
  """

  throughput_unit = "pairs/s"
  main_metric = "test_bleu"
  higher_is_better = True
  label_smoothing = 0.1

  def __init__(self, config: ml_collections.ConfigDict,
               workers: extrap_optax.Workers):
    self.config = config
    self.workers = workers
    self.data = self._load(config)
    src, tgt = self.data.ids["train"]
    if config.data.train_size:
      src, tgt = src[:config.data.train_size], tgt[:config.data.train_size]
    self.batcher = multi30k.TranslationBatcher(
        src, tgt, workers.num_workers, config.workers.local_batch_size,
        config.seed)
    self.steps_per_epoch = self.batcher.steps_per_epoch
    self.examples_per_step = (workers.num_workers
                              * config.workers.local_batch_size)
    self.model = models.get_model(
        "transformer", src_vocab_size=len(self.data.src_vocab),
        tgt_vocab_size=len(self.data.tgt_vocab),
        **config.model.kwargs.to_dict())
    size = config.data.eval_size or None
    self.valid = tuple(x[:size] for x in self.data.ids["validation"])
    self.test = tuple(x[:size] for x in self.data.ids["test"])
    self.test_text = self.data.text["test"][1][:size]
    self._eval_step = jax.jit(self._eval_step_fn)

  @staticmethod
  def check_data(config: ml_collections.ConfigDict) -> None:
    if config.data.source != "synthetic":
      common.resolve_data_dir(data_dir(config), multi30k.SUBDIR,
                              multi30k.expected_files())

  @staticmethod
  def _load(config) -> multi30k.TranslationData:
    if config.data.source == "synthetic":
      return synthetic.translation(config)
    return multi30k.load_translation_data(data_dir(config))

  def init(self, rng):
    tokens = jnp.ones((1, 8), jnp.int32)
    return self.model.init(rng, tokens, tokens, train=False)["params"], {}

  def loss(self, params, model_state, batch, rng, step):
    del step
    src, tgt = batch
    logits = self.model.apply({"params": params}, src, tgt[:, :-1], train=True,
                              rngs={"dropout": rng})
    loss = models.label_smoothed_cross_entropy(logits, tgt[:, 1:],
                                               self.label_smoothing)
    return loss, (model_state, {})

  def train_batch(self, step: int) -> Batch:
    return worker_arrays.place(self.workers, self.batcher.batch(step))

  def _eval_step_fn(self, params, src, tgt, mask):
    logits = self.model.apply({"params": params}, src, tgt[:, :-1],
                              train=False).astype(jnp.float32)
    targets = tgt[:, 1:]
    weights = (targets != multi30k.PAD_ID) * mask[:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)

  def evaluate(self, params, model_state, *, final: bool = True):
    del model_state
    batch_size = self.config.data.eval_batch_size
    total = count = 0.0
    for src, tgt, mask in multi30k.eval_batches(*self.valid, batch_size):
      loss, n = self._eval_step(params, src, tgt, mask)
      total, count = total + float(loss), count + float(n)
    mean = total / max(count, 1.0)
    metrics = {"valid_loss": mean, "valid_perplexity": float(np.exp(mean))}
    # Configurations saved before the field existed decoded every time.
    if final or self.config.data.get("bleu_at_every_eval", True):
      metrics["test_bleu"] = self.test_bleu(params)
    return metrics

  def test_bleu(self, params) -> float:
    """Corpus BLEU of the decoded test set (`data.beam_size`, greedy at 1)."""
    batch_size = self.config.data.eval_batch_size
    hypotheses = []
    for src, _, mask in multi30k.eval_batches(*self.test, batch_size):
      if self.config.data.beam_size > 1:
        out, _ = models.beam_search(
            self.model, params, src, max_len=self.config.data.max_decode_len,
            bos_id=multi30k.BOS_ID, eos_id=multi30k.EOS_ID,
            beam_size=self.config.data.beam_size)
      else:
        out = models.greedy_decode(
            self.model, params, src, max_len=self.config.data.max_decode_len,
            bos_id=multi30k.BOS_ID, eos_id=multi30k.EOS_ID)
      hypotheses.extend(np.asarray(out)[np.asarray(mask)].tolist())
    return bleu.bleu(hypotheses, self.test_text, self.data.tgt_vocab,
                         self.data.tgt_tokenizer)
