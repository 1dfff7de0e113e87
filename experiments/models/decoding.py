"""Autoregressive decoding of the Transformer: greedy and beam search.

Decoding (``greedy_decode``, ``beam_search``) uses flax's autoregressive cache
(``use_cache=True``, which sets ``decode=True`` on the self-attention, as in
the flax WMT example): each step runs the decoder on one token and attends over
cached keys and values. The search loops themselves (``greedy_search``,
``beam_search_from_step``) take any step function, and are jit-friendly
(``lax.scan`` and ``lax.while_loop`` over fixed-shape state).
"""

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp

from experiments.models.transformer import NEG_INF
from experiments.models.transformer import PAD_ID
from experiments.models.transformer import Transformer


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
