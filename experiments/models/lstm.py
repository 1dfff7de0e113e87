"""Two-layer LSTM language model with tied embeddings (Merity et al., 2017,
"Regularizing and Optimizing LSTM Language Models"; PyTorch's
examples/word_language_model), the LSTM of the paper's WikiText-2 task.

Architecture (paper App. C: hidden 128, dropout 0.4):

  tokens (batch, time) - embedding (vocab x 128) - dropout
  - LSTM(128) - dropout - LSTM(128) - dropout
  - decoder: logits = h @ embedding^T + bias (tied weights, Press & Wolf 2017)

Dropout is plain per-element dropout, as in the PyTorch example (``nn.Dropout``
on the embeddings and on the output, the LSTM's ``dropout`` between layers);
it is not AWD-LSTM's variational/weight dropout.

Initialisation (choice): the embedding, and so the tied decoder weight, is
U(±0.1) and the decoder bias zero, as in both reference codes. The LSTM weights
and biases are U(±1/sqrt(hidden)) = U(±0.088) for hidden 128, PyTorch's
``nn.LSTM`` default that both reference codes leave untouched;
``lstm_init_range=0.1`` makes every weight U(±0.1). Flax's LSTM cell has one
bias per gate where PyTorch has two (b_ih + b_hh, a redundant pair), so the
model has 4 * hidden fewer parameters per layer than the PyTorch one.

The hidden state is an explicit input and output so the trainer can carry it
across BPTT segments and detach it (``jax.lax.stop_gradient``) in between.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments.models.resnet import symmetric_uniform

Dtype = Any
# Per layer (c, h), each of shape (batch, hidden).
Carry = tuple[tuple[jax.Array, jax.Array], ...]

WIKITEXT2_VOCAB_SIZE = 33_278


class LSTMLanguageModel(nn.Module):
  """Multi-layer LSTM language model with tied input/output embeddings.

  Attributes:
    vocab_size: vocabulary size (33,278 for word-level WikiText-2).
    hidden_size: embedding and LSTM width (equal, for weight tying).
    num_layers: number of stacked LSTM layers.
    dropout_rate: dropout on the embeddings, between layers and on the output.
    embedding_init_range: the embedding is U(±embedding_init_range).
    lstm_init_range: LSTM weights and biases are U(±lstm_init_range);
      None means 1/sqrt(hidden_size), PyTorch's default.
    dtype: computation dtype; parameters and the carry stay float32.
  """
  vocab_size: int = WIKITEXT2_VOCAB_SIZE
  hidden_size: int = 128
  num_layers: int = 2
  dropout_rate: float = 0.4
  embedding_init_range: float = 0.1
  lstm_init_range: float | None = None
  dtype: Dtype = jnp.float32

  @nn.nowrap
  def initial_carry(self, batch_size: int) -> Carry:
    """The all-zero hidden state for a new sequence.

    Args:
      batch_size: number of sequences (columns of the batchified stream).

    Returns:
      One (c, h) pair per layer, each of shape (batch_size, hidden_size).
    """
    zeros = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
    return tuple((zeros, zeros) for _ in range(self.num_layers))

  @nn.compact
  def __call__(self, tokens: jax.Array, carry: Carry, *,
               train: bool) -> tuple[jax.Array, Carry]:
    """Runs the model over one BPTT segment.

    Args:
      tokens: int token ids, shape (batch, time).
      carry: hidden state from ``initial_carry`` or the previous segment.
      train: apply dropout (needs a ``'dropout'`` rng) when true.

    Returns:
      Logits of shape (batch, time, vocab_size) in ``dtype``, and the hidden
      state after the last time step.
    """
    lstm_range = (self.lstm_init_range if self.lstm_init_range is not None
                  else 1.0 / math.sqrt(self.hidden_size))
    lstm_init = symmetric_uniform(lstm_range)
    embed = nn.Embed(
        self.vocab_size, self.hidden_size, dtype=self.dtype,
        embedding_init=symmetric_uniform(self.embedding_init_range),
        name="embed")
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)

    x = dropout(embed(tokens))
    new_carry = []
    for layer in range(self.num_layers):
      cell = nn.OptimizedLSTMCell(
          self.hidden_size, kernel_init=lstm_init,
          recurrent_kernel_init=lstm_init, bias_init=lstm_init,
          dtype=self.dtype, name=f"lstm{layer + 1}")
      layer_carry, x = nn.RNN(cell, return_carry=True)(
          x, initial_carry=carry[layer])
      new_carry.append(layer_carry)
      x = dropout(x.astype(self.dtype))
    decoder_bias = self.param("decoder_bias", nn.initializers.zeros,
                              (self.vocab_size,))
    logits = embed.attend(x) + decoder_bias.astype(self.dtype)
    return logits, tuple(new_carry)


def language_model_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross entropy averaged over all examples and time steps.

  Args:
    logits: shape (batch, time, vocab).
    targets: int next-token ids, shape (batch, time).

  Returns:
    The scalar mean loss (its exp is the perplexity), computed in float32.
  """
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets).mean()
