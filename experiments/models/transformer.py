"""Encoder-decoder Transformer for translation (Vaswani et al., 2017, "Attention
Is All You Need"), pre-LayerNorm and halved, the Transformer of the paper's
Multi30k task.

Architecture (defaults): the base model's widths halved, d_model 256,
d_ff 1024; 6 encoder and 6 decoder layers; 8 heads (choice: the base model's
head count kept, so heads are 32 wide; ``num_heads=4`` keeps the base head width
of 64 instead, with the same parameter count).

  encoder: x = dropout(embed(src) * sqrt(d_model) + sinusoids)
           per layer: x += dropout(self_attention(LN(x)))
                      x += dropout(ffn(LN(x)))
           final LN
  decoder: the same with causal self-attention, plus
           x += dropout(cross_attention(LN(x), encoder output))
           before the ffn, then a final LN and the output projection.

ffn(x) = W2 relu(W1 x + b1) + b2. Pre-LN (Xiong et al., 2020) puts LayerNorm
before each sublayer and needs the final LayerNorms. Dropout 0.1 applies to
the embeddings, to every sublayer output and to the attention weights.

Masks (pad id 0): the encoder self-attention and the cross-attention ignore
padded source keys; the decoder self-attention is causal and ignores padded
target keys. Queries are never masked: outputs at padded positions are
meaningless and the loss ignores them.

Initialisation: Xavier-uniform kernels and zero biases for every dense layer
(attention projections included, with the per-head kernels treated as one
d_model x d_model matrix); embeddings N(0, d_model^-1/2), so that after the
sqrt(d_model) scaling they have unit variance (fairseq, tensor2tensor);
LayerNorm scale 1, offset 0.

Vocabularies are separate by default (``share_embeddings=True`` shares one
source/target embedding, for a joint vocabulary). As in Vaswani et al. §3.4, the
output projection reuses the target embedding (``logits_via_embedding``); with
it off, a separate dense layer with bias maps to the target vocabulary.

Decoding (greedy and beam search) is in ``decoding.py``.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Dtype = Any
PAD_ID = 0
# A finite "minus infinity", so that score arithmetic never produces NaNs.
NEG_INF = -1.0e9

xavier_uniform = nn.initializers.xavier_uniform()


def sinusoids(max_len: int, d_model: int) -> np.ndarray:
  """The sinusoidal position encodings of Vaswani et al. (2017), §3.5.

  Args:
    max_len: number of positions.
    d_model: encoding width (even).

  Returns:
    Array of shape (max_len, d_model): sin in even columns, cos in odd ones.
  """
  position = np.arange(max_len)[:, None]
  inv_freq = np.exp(-np.log(10000.0) * np.arange(0, d_model, 2) / d_model)
  table = np.zeros((max_len, d_model), np.float32)
  table[:, 0::2] = np.sin(position * inv_freq)
  table[:, 1::2] = np.cos(position * inv_freq)
  return table


class AddPositions(nn.Module):
  """Adds sinusoidal position encodings.

  In decode mode the input is one token and its position comes from a counter
  in the ``'cache'`` collection.

  Attributes:
    max_len: largest supported sequence length.
    decode: autoregressive single-step mode.
  """
  max_len: int
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    length, d_model = x.shape[-2:]
    table = jnp.asarray(sinusoids(self.max_len, d_model), x.dtype)
    if self.decode:
      is_initialized = self.has_variable("cache", "position")
      position = self.variable("cache", "position",
                               lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        offset = position.value
        position.value = offset + 1
        return x + jax.lax.dynamic_slice_in_dim(table, offset, 1)
    return x + table[:length]


class FeedForward(nn.Module):
  """Position-wise feed-forward network, W2 relu(W1 x + b1) + b2.

  Attributes:
    d_ff: hidden width.
    dtype: computation dtype.
  """
  d_ff: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, kernel_init=xavier_uniform,
                              dtype=self.dtype)
    return dense(x.shape[-1], name="out")(nn.relu(dense(self.d_ff,
                                                        name="hidden")(x)))


class EncoderLayer(nn.Module):
  """Pre-LN encoder layer: self-attention and feed-forward sublayers.

  Attributes:
    num_heads: attention heads.
    d_ff: feed-forward hidden width.
    dropout_rate: residual dropout.
    attention_dropout_rate: dropout on the attention weights.
    dtype: computation dtype.
  """
  num_heads: int
  d_ff: int
  dropout_rate: float
  attention_dropout_rate: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *,
               train: bool) -> jax.Array:
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    y = nn.MultiHeadDotProductAttention(
        self.num_heads, dtype=self.dtype, kernel_init=xavier_uniform,
        dropout_rate=self.attention_dropout_rate, deterministic=not train,
        name="self_attention")(y, y, mask=mask)
    x = x + dropout(y)
    y = nn.LayerNorm(dtype=self.dtype, name="ffn_norm")(x)
    y = FeedForward(self.d_ff, dtype=self.dtype, name="ffn")(y)
    return x + dropout(y)


class DecoderLayer(nn.Module):
  """Pre-LN decoder layer: causal self-attention, cross-attention, feed-forward.

  Attributes:
    num_heads: attention heads.
    d_ff: feed-forward hidden width.
    dropout_rate: residual dropout.
    attention_dropout_rate: dropout on the attention weights.
    dtype: computation dtype.
    decode: autoregressive single-step mode with a key/value cache.
  """
  num_heads: int
  d_ff: int
  dropout_rate: float
  attention_dropout_rate: float
  dtype: Dtype = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array,
               self_mask: jax.Array | None, cross_mask: jax.Array, *,
               train: bool) -> jax.Array:
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    attention = functools.partial(
        nn.MultiHeadDotProductAttention, self.num_heads, dtype=self.dtype,
        kernel_init=xavier_uniform, dropout_rate=self.attention_dropout_rate,
        deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name="self_attention_norm")(x)
    y = attention(decode=self.decode, name="self_attention")(y, y,
                                                              mask=self_mask)
    x = x + dropout(y)
    y = nn.LayerNorm(dtype=self.dtype, name="cross_attention_norm")(x)
    y = attention(name="cross_attention")(y, encoded, mask=cross_mask)
    x = x + dropout(y)
    y = nn.LayerNorm(dtype=self.dtype, name="ffn_norm")(x)
    y = FeedForward(self.d_ff, dtype=self.dtype, name="ffn")(y)
    return x + dropout(y)


def _key_padding_mask(queries: jax.Array, keys: jax.Array) -> jax.Array:
  """Attention mask (batch, 1, len_q, len_k) that hides padded keys."""
  return nn.make_attention_mask(jnp.ones_like(queries), keys != PAD_ID)


class Transformer(nn.Module):
  """Pre-LN encoder-decoder Transformer.

  Attributes:
    src_vocab_size: source vocabulary size (pad id 0).
    tgt_vocab_size: target vocabulary size (pad id 0).
    d_model: model width.
    d_ff: feed-forward hidden width.
    num_heads: attention heads (d_model must be divisible by it).
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    dropout_rate: dropout on embeddings and sublayer outputs.
    attention_dropout_rate: dropout on the attention weights.
    max_len: largest source or target length (sinusoid table size).
    share_embeddings: one embedding for source and target (needs equal
      vocabulary sizes).
    logits_via_embedding: output projection tied to the target embedding.
    dtype: computation dtype; parameters stay float32.
    use_cache: autoregressive single-token decoding with a key/value cache
      (set by the decoding functions through ``clone(use_cache=True)``).
  """
  src_vocab_size: int
  tgt_vocab_size: int
  d_model: int = 256
  d_ff: int = 1024
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  max_len: int = 256
  share_embeddings: bool = False
  logits_via_embedding: bool = True
  dtype: Dtype = jnp.float32
  use_cache: bool = False

  def setup(self):
    if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
      raise ValueError(
          "share_embeddings needs src_vocab_size == tgt_vocab_size, got "
          f"{self.src_vocab_size} and {self.tgt_vocab_size}.")
    embed = functools.partial(
        nn.Embed, features=self.d_model, dtype=self.dtype,
        embedding_init=nn.initializers.normal(self.d_model**-0.5))
    self.tgt_embed = embed(self.tgt_vocab_size)
    self.src_embed = (self.tgt_embed if self.share_embeddings
                      else embed(self.src_vocab_size))
    self.src_positions = AddPositions(self.max_len)
    self.tgt_positions = AddPositions(self.max_len, decode=self.use_cache)
    self.dropout = nn.Dropout(self.dropout_rate)
    layer_args = dict(num_heads=self.num_heads, d_ff=self.d_ff,
                      dropout_rate=self.dropout_rate,
                      attention_dropout_rate=self.attention_dropout_rate,
                      dtype=self.dtype)
    self.encoder_layers = [EncoderLayer(**layer_args)
                           for _ in range(self.num_encoder_layers)]
    self.encoder_norm = nn.LayerNorm(dtype=self.dtype)
    self.decoder_layers = [DecoderLayer(**layer_args, decode=self.use_cache)
                           for _ in range(self.num_decoder_layers)]
    self.decoder_norm = nn.LayerNorm(dtype=self.dtype)
    if not self.logits_via_embedding:
      self.output_projection = nn.Dense(
          self.tgt_vocab_size, kernel_init=xavier_uniform, dtype=self.dtype)

  def _embed(self, embed: nn.Embed, positions: AddPositions,
             tokens: jax.Array, train: bool) -> jax.Array:
    x = positions(embed(tokens) * math.sqrt(self.d_model))
    return self.dropout(x, deterministic=not train)

  def encode(self, src: jax.Array, *, train: bool) -> jax.Array:
    """Encodes source tokens.

    Args:
      src: int token ids, shape (batch, src_len), padded with 0.
      train: apply dropout (needs a ``'dropout'`` rng) when true.

    Returns:
      Encoder output of shape (batch, src_len, d_model).
    """
    x = self._embed(self.src_embed, self.src_positions, src, train)
    mask = _key_padding_mask(src, src)
    for layer in self.encoder_layers:
      x = layer(x, mask, train=train)
    return self.encoder_norm(x)

  def decode(self, encoded: jax.Array, src: jax.Array, tgt_in: jax.Array, *,
             train: bool) -> jax.Array:
    """Decodes given the encoder output (one token at a time if ``use_cache``).

    Args:
      encoded: encoder output, shape (batch, src_len, d_model).
      src: the source tokens, for the cross-attention padding mask.
      tgt_in: int decoder inputs (BOS-shifted targets), shape (batch, tgt_len);
        (batch, 1) with ``use_cache``, with a ``'cache'`` collection passed as
        mutable.
      train: apply dropout (needs a ``'dropout'`` rng) when true.

    Returns:
      Logits of shape (batch, tgt_len, tgt_vocab_size), in ``dtype``.
    """
    x = self._embed(self.tgt_embed, self.tgt_positions, tgt_in, train)
    # With the cache, the self-attention supplies the causal mask, and all
    # generated tokens are real.
    self_mask = None if self.use_cache else nn.combine_masks(
        nn.make_causal_mask(tgt_in), _key_padding_mask(tgt_in, tgt_in))
    cross_mask = _key_padding_mask(tgt_in, src)
    for layer in self.decoder_layers:
      x = layer(x, encoded, self_mask, cross_mask, train=train)
    x = self.decoder_norm(x)
    if self.logits_via_embedding:
      return self.tgt_embed.attend(x)
    return self.output_projection(x)

  def __call__(self, src: jax.Array, tgt_in: jax.Array, *,
               train: bool) -> jax.Array:
    """Teacher-forced logits for a batch of sentence pairs.

    Args:
      src: int source ids, shape (batch, src_len), padded with 0.
      tgt_in: int decoder inputs, BOS followed by the target shifted right,
        shape (batch, tgt_len), padded with 0.
      train: apply dropout (needs a ``'dropout'`` rng) when true.

    Returns:
      Logits of shape (batch, tgt_len, tgt_vocab_size), in ``dtype``.
    """
    return self.decode(self.encode(src, train=train), src, tgt_in,
                       train=train)


def label_smoothed_cross_entropy(logits: jax.Array, targets: jax.Array,
                                 smoothing: float = 0.1) -> jax.Array:
  """Label-smoothed cross entropy averaged over non-pad target tokens.

  The smoothed target puts 1 - smoothing + smoothing / V on the true token and
  smoothing / V on every other token (``optax.smooth_labels``).

  Args:
    logits: shape (batch, len, V).
    targets: int target ids, shape (batch, len); pad (0) positions are ignored.
    smoothing: label-smoothing mass.

  Returns:
    The scalar mean loss over non-pad tokens, in float32 (0 if all are pad).
  """
  labels = optax.smooth_labels(
      jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32), smoothing)
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
  weights = (targets != PAD_ID).astype(jnp.float32)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
