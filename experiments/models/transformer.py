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

Decoding (``greedy_decode``, ``beam_search``) uses flax's autoregressive cache
(``use_cache=True``, which sets ``decode=True`` on the self-attention, as in
the flax WMT example): each step runs the decoder on one token and attends over
cached keys and values. The search loops themselves (``greedy_search``,
``beam_search_from_step``) take any step function, and are jit-friendly
(``lax.scan`` and ``lax.while_loop`` over fixed-shape state).
"""

from collections.abc import Callable
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


def length_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0)**alpha


# step_fn(last_tokens (rows,), cache) -> (float32 log-probs (rows, V), cache).
StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def _decoder_step_fn(model: Transformer, params: Any, src: jax.Array,
                     copies: int, max_len: int) -> tuple[StepFn, Any]:
  """Encodes ``src`` and prepares cached single-token decoding.

  Args:
    model: the Transformer (any ``use_cache`` setting).
    params: its parameters.
    src: source ids, shape (batch, src_len).
    copies: hypotheses per source sentence (beam size); rows of the decoder
      batch are sentence-major, copy-minor.
    max_len: largest number of decoding steps.

  Returns:
    The step function, whose log-probabilities exclude the pad token, and the
    initial cache.
  """
  if max_len > model.max_len:
    raise ValueError(f"max_len {max_len} exceeds the model's max_len "
                     f"{model.max_len}.")
  decoder = model.clone(use_cache=True)
  encoded = model.apply({"params": params}, src, train=False,
                        method=Transformer.encode)
  encoded = jnp.repeat(encoded, copies, axis=0)
  src = jnp.repeat(src, copies, axis=0)
  # The cache variables are created zero-filled (position counters 0) when the
  # decoder first runs on a full-length target, so their shapes suffice.
  cache_shapes = jax.eval_shape(
      functools.partial(decoder.init, train=False,
                        method=Transformer.decode),
      jax.random.key(0), encoded, src,
      jnp.ones((src.shape[0], max_len), jnp.int32))["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

  def step(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    logits, variables = decoder.apply(
        {"params": params, "cache": cache}, encoded, src, tokens[:, None],
        train=False, mutable=["cache"], method=Transformer.decode)
    logits = logits[:, 0].astype(jnp.float32).at[:, PAD_ID].set(NEG_INF)
    return jax.nn.log_softmax(logits), variables["cache"]

  return step, cache


def greedy_search(step_fn: StepFn, cache: Any, *, batch_size: int,
                  max_len: int, bos_id: int, eos_id: int) -> jax.Array:
  """Greedy search over any autoregressive step function.

  Args:
    step_fn: maps the last tokens (batch_size,) and the cache to float32
      log-probabilities (batch_size, V) and the next cache.
    cache: the initial cache (any pytree).
    batch_size: number of sentences.
    max_len: number of tokens to generate (EOS included).
    bos_id: first input token.
    eos_id: end of sentence; generation for a sentence stops after it.

  Returns:
    Tokens of shape (batch_size, max_len), without BOS, with EOS where
    generated, padded with 0 after it.
  """

  def body(state, _):
    last, done, cache = state
    log_probs, cache = step_fn(last, cache)
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    output = jnp.where(done, PAD_ID, token)
    return (token, done | (token == eos_id), cache), output

  init = (jnp.full((batch_size,), bos_id, jnp.int32),
          jnp.zeros((batch_size,), bool), cache)
  _, tokens = jax.lax.scan(body, init, length=max_len)
  return tokens.T


def _gather_beams(tree: Any, indices: jax.Array) -> Any:
  """Reorders the beams of every array in a decoding cache.

  Args:
    tree: arrays of shape (batch * beam_size, ...); scalars (the cache
      counters) pass through.
    indices: int beam indices, shape (batch, beam_size).

  Returns:
    ``tree`` with the row of beam j of sentence b replaced by the row of beam
    ``indices[b, j]``.
  """
  rows = indices + indices.shape[1] * jnp.arange(indices.shape[0])[:, None]
  return jax.tree.map(lambda x: x if x.ndim == 0 else x[rows.reshape(-1)],
                      tree)


def beam_search_from_step(step_fn: StepFn, cache: Any, *, batch_size: int,
                          beam_size: int, max_len: int, alpha: float,
                          bos_id: int,
                          eos_id: int) -> tuple[jax.Array, jax.Array]:
  """Beam search over any autoregressive step function.

  Hypotheses are scored by log p(y) / ((5 + |y|) / 6) ** alpha (GNMT length
  penalty, Wu et al., 2016), |y| counting EOS. As in fairseq, each step
  expands the live beams into their 2 * beam_size best continuations by total
  log-probability; those among the beam_size best that end in EOS are
  finished, and the beam_size best that do not stay live. A sentence is done
  once it has beam_size finished hypotheses; at step max_len the beam_size best
  continuations are finished whatever their last token. With beam_size 1 this
  is greedy search.

  Args:
    step_fn: maps the last tokens (batch_size * beam_size,), rows
      sentence-major, and the cache to float32 log-probabilities
      (batch_size * beam_size, V) and the next cache.
    cache: the initial cache, arrays with leading dimension
      batch_size * beam_size, or scalars.
    batch_size: number of sentences.
    beam_size: hypotheses kept per sentence.
    max_len: largest number of generated tokens (EOS included).
    alpha: length-penalty exponent (0 ranks by total log-probability).
    bos_id: first input token.
    eos_id: end of sentence.

  Returns:
    The best hypothesis per sentence, shape (batch_size, max_len), without
    BOS, with EOS where generated, padded with 0; and its score, shape
    (batch_size,).
  """
  batch, k = batch_size, beam_size

  def cond(state):
    i, _, _, _, _, _, fin_flags, _ = state
    return (i < max_len) & ~jnp.all(fin_flags)

  def body(state):
    (i, alive_seq, alive_lp, last, fin_seq, fin_score, fin_flags,
     cache) = state
    log_probs, cache = step_fn(last.reshape(-1), cache)
    vocab = log_probs.shape[-1]
    candidates = alive_lp[..., None] + log_probs.reshape(batch, k, vocab)
    cand_lp, flat_index = jax.lax.top_k(candidates.reshape(batch, k * vocab),
                                        2 * k)
    cand_beam, cand_token = flat_index // vocab, flat_index % vocab
    cand_seq = jnp.take_along_axis(alive_seq, cand_beam[..., None], axis=1)
    cand_seq = jax.lax.dynamic_update_slice_in_dim(
        cand_seq, cand_token[..., None].astype(jnp.int32), i, axis=2)
    is_eos = cand_token == eos_id

    # Candidates extending a dead beam or choosing an excluded token score
    # about NEG_INF; they can reach the top k only when the vocabulary is
    # smaller than the beam. Done sentences keep their finished set.
    new_fin = ((is_eos | (i == max_len - 1)) & (jnp.arange(2 * k) < k)
               & (cand_lp > NEG_INF / 2)
               & ~jnp.all(fin_flags, axis=1, keepdims=True))
    new_fin_score = jnp.where(new_fin, cand_lp / length_penalty(i + 1, alpha),
                              NEG_INF)
    fin_score, top = jax.lax.top_k(
        jnp.concatenate([fin_score, new_fin_score], axis=1), k)
    fin_seq = jnp.take_along_axis(
        jnp.concatenate([fin_seq, cand_seq], axis=1), top[..., None], axis=1)
    fin_flags = jnp.take_along_axis(
        jnp.concatenate([fin_flags, new_fin], axis=1), top, axis=1)

    # At least k of the 2k candidates are not EOS (one EOS per beam at most).
    alive_lp, top = jax.lax.top_k(jnp.where(is_eos, 2 * NEG_INF, cand_lp), k)
    alive_seq = jnp.take_along_axis(cand_seq, top[..., None], axis=1)
    last = jnp.take_along_axis(cand_token, top, axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(cand_beam, top, axis=1))
    return (i + 1, alive_seq, alive_lp, last, fin_seq, fin_score, fin_flags,
            cache)

  # Only beam 0 is live at first, so the first expansion has no duplicates.
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  empty_seq = jnp.zeros((batch, k, max_len), jnp.int32)
  state = (jnp.array(0, jnp.int32), empty_seq, alive_lp,
           jnp.full((batch, k), bos_id, jnp.int32), empty_seq,
           jnp.full((batch, k), NEG_INF), jnp.zeros((batch, k), bool), cache)
  state = jax.lax.while_loop(cond, body, state)
  fin_seq, fin_score = state[4], state[5]
  # top_k keeps the finished hypotheses sorted, best first.
  return fin_seq[:, 0], fin_score[:, 0]


@functools.partial(jax.jit,
                   static_argnames=("model", "max_len", "bos_id", "eos_id"))
def greedy_decode(model: Transformer, params: Any, src: jax.Array, *,
                  max_len: int, bos_id: int, eos_id: int) -> jax.Array:
  """Greedy decoding with the Transformer's key/value cache.

  Args:
    model: the Transformer.
    params: its parameters.
    src: int source ids, shape (batch, src_len), padded with 0.
    max_len: number of tokens to generate (EOS included), at most
      ``model.max_len``.
    bos_id: first decoder input.
    eos_id: end of sentence.

  Returns:
    Tokens of shape (batch, max_len), without BOS, with EOS where generated,
    padded with 0 after it. The pad token is never generated.
  """
  step, cache = _decoder_step_fn(model, params, src, 1, max_len)
  return greedy_search(step, cache, batch_size=src.shape[0], max_len=max_len,
                       bos_id=bos_id, eos_id=eos_id)


@functools.partial(
    jax.jit,
    static_argnames=("model", "beam_size", "max_len", "alpha", "bos_id",
                     "eos_id"))
def beam_search(model: Transformer, params: Any, src: jax.Array, *,
                beam_size: int = 4, max_len: int, alpha: float = 0.6,
                bos_id: int, eos_id: int) -> tuple[jax.Array, jax.Array]:
  """Beam search with the Transformer's key/value cache.

  See ``beam_search_from_step`` for the algorithm; the pad token is never
  generated, and the scores use log-probabilities renormalised without it.

  Args:
    model: the Transformer.
    params: its parameters.
    src: int source ids, shape (batch, src_len), padded with 0.
    beam_size: hypotheses kept per sentence.
    max_len: largest number of generated tokens (EOS included), at most
      ``model.max_len``.
    alpha: length-penalty exponent.
    bos_id: first decoder input.
    eos_id: end of sentence.

  Returns:
    The best hypothesis per sentence, shape (batch, max_len), without BOS, with
    EOS where generated, padded with 0; and its score, shape (batch,).
  """
  step, cache = _decoder_step_fn(model, params, src, beam_size, max_len)
  return beam_search_from_step(step, cache, batch_size=src.shape[0],
                               beam_size=beam_size, max_len=max_len,
                               alpha=alpha, bos_id=bos_id, eos_id=eos_id)
