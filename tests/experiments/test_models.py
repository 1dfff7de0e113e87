"""Tests for the Flax models of the three benchmark tasks."""

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models
from experiments.models import LSTMLanguageModel
from experiments.models import ResNet
from experiments.models import Transformer
from experiments.models import VGG

# rbg keys: XLA:CPU compiles model initialisation several times faster than
# with the default threefry keys; the init distributions are the same.
KEY = jax.random.key(0, impl="rbg")
IMAGES = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
PAD, BOS, EOS = 0, 1, 2


def num_params(variables) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def abstract_init(model: nn.Module, *args, **kwargs):
  """Variable shapes without running the initialisers."""
  return jax.eval_shape(lambda: model.init(KEY, *args, **kwargs))


@functools.lru_cache(maxsize=None)
def _jit(model: nn.Module, method: str,
         kwargs: tuple[tuple[str, object], ...]):
  # Cached on the model's value (bound methods compare by identity), so that
  # equal models with the same static arguments share one compiled program
  # per input shape: compiling dominates the test time.
  return jax.jit(functools.partial(getattr(model, method), **dict(kwargs)))


def init(model: nn.Module, *args, key: jax.Array = KEY, **kwargs):
  """``model.init`` compiled; keyword arguments are static."""
  return _jit(model, "init", tuple(sorted(kwargs.items())))(key, *args)


def apply(model: nn.Module, variables, *args, **kwargs):
  """``model.apply`` compiled; keyword arguments are static."""
  return _jit(model, "apply", tuple(sorted(kwargs.items())))(variables, *args)


def small_transformer(**kwargs) -> Transformer:
  config = dict(src_vocab_size=23, tgt_vocab_size=19, d_model=32, d_ff=64,
                num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                max_len=32)
  config.update(kwargs)
  return Transformer(**config)


@pytest.fixture(scope="module")
def resnet_variables():
  return init(ResNet(), IMAGES, train=False)


@pytest.fixture(scope="module")
def vgg_bn_variables():
  return init(VGG(use_batch_norm=True), IMAGES, train=False)


@pytest.fixture(scope="module")
def small_lstm():
  model = LSTMLanguageModel(vocab_size=40, hidden_size=16)
  tokens = jax.random.randint(KEY, (2, 10), 0, 40)
  variables = init(model, tokens, model.initial_carry(2), train=False)
  return model, variables, tokens


@pytest.fixture(scope="module")
def transformer_setup():
  model = small_transformer()
  src = jnp.array([[5, 6, 7, 8, 9, 3], [4, 11, 12, 0, 0, 0],
                   [13, 3, 0, 0, 0, 0]], jnp.int32)
  tgt = jnp.array([[BOS, 5, 6, 7, 8], [BOS, 9, 10, 0, 0], [BOS, 3, 4, 5, 0]],
                  jnp.int32)
  params = init(model, src, tgt, train=False)["params"]
  return model, params, src, tgt


# ----------------------------------------------------------------------------
# Parameter counts, against counts computed here from the layer shapes.


def conv_count(c_in: int, c_out: int, k: int = 3, bias: bool = False) -> int:
  return k * k * c_in * c_out + (c_out if bias else 0)


def test_resnet20_parameter_count():
  def conv_bn(c_in: int, c_out: int, k: int = 3) -> int:
    return conv_count(c_in, c_out, k) + 2 * c_out  # BN scale and offset

  count = conv_bn(3, 16)
  c_in = 16
  for c_out in (16, 32, 64):
    for _ in range(3):
      count += conv_bn(c_in, c_out) + conv_bn(c_out, c_out)
      if c_in != c_out:
        count += conv_bn(c_in, c_out, k=1)  # projection shortcut
      c_in = c_out
  count += 64 * 10 + 10
  assert count == 272_474
  assert num_params(abstract_init(ResNet(), IMAGES, train=False)) == count


def test_resnet_depth_must_be_6n_plus_2():
  resnet32 = abstract_init(ResNet(depth=32), IMAGES, train=False)
  assert num_params(resnet32) > 272_474
  with pytest.raises(ValueError, match="6n"):
    abstract_init(ResNet(depth=21), IMAGES, train=False)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_vgg11_half_width_parameter_count(num_classes, use_batch_norm):
  # VGG-11 configuration A, every width halved; 5 pools take 32x32 to 1x1.
  widths = [32, 64, 128, 128, 256, 256, 256, 256]
  count, c_in = 0, 3
  for c_out in widths:
    count += conv_count(c_in, c_out, bias=not use_batch_norm)
    count += 2 * c_out if use_batch_norm else 0
    c_in = c_out
  count += 256 * num_classes + num_classes
  model = models.get_model("vgg11_bn" if use_batch_norm else "vgg11",
                           num_classes=num_classes)
  assert num_params(abstract_init(model, IMAGES, train=False)) == count


def test_lstm_parameter_count():
  vocab, hidden = 33_278, 128
  # Per layer: input and recurrent kernels for 4 gates plus one bias per gate.
  lstm_layer = 4 * (hidden * hidden + hidden * hidden + hidden)
  # Tied decoder: only its bias is extra.
  expected = vocab * hidden + 2 * lstm_layer + vocab
  model = models.get_model("lstm")
  variables = abstract_init(model, jnp.zeros((2, 3), jnp.int32),
                            model.initial_carry(2), train=False)
  assert num_params(variables) == expected == 4_556_030


def transformer_count(src_vocab: int, tgt_vocab: int, d: int, d_ff: int,
                      enc_layers: int, dec_layers: int, shared: bool,
                      tied: bool) -> int:
  layer_norm = 2 * d
  attention = 4 * (d * d + d)  # q, k, v and output projections
  ffn = d * d_ff + d_ff + d_ff * d + d
  encoder = enc_layers * (2 * layer_norm + attention + ffn) + layer_norm
  decoder = dec_layers * (3 * layer_norm + 2 * attention + ffn) + layer_norm
  embeddings = tgt_vocab * d + (0 if shared else src_vocab * d)
  output = 0 if tied else d * tgt_vocab + tgt_vocab
  return encoder + decoder + embeddings + output


@pytest.mark.parametrize("shared,tied", [(False, True), (True, True),
                                         (False, False)])
def test_transformer_parameter_count(shared, tied):
  src_vocab, tgt_vocab = (6000, 6000) if shared else (5000, 6000)
  model = models.get_model("transformer", src_vocab_size=src_vocab,
                           tgt_vocab_size=tgt_vocab, share_embeddings=shared,
                           logits_via_embedding=tied)
  tokens = jnp.ones((2, 5), jnp.int32)
  expected = transformer_count(src_vocab, tgt_vocab, 256, 1024, 6, 6, shared,
                               tied)
  assert num_params(abstract_init(model, tokens, tokens,
                                  train=False)) == expected


def test_shared_embeddings_need_equal_vocabularies():
  with pytest.raises(ValueError, match="share_embeddings"):
    tokens = jnp.ones((1, 3), jnp.int32)
    abstract_init(small_transformer(share_embeddings=True), tokens, tokens,
                  train=False)


def test_get_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="resnet20, vgg11, vgg11_bn, lstm, "
                     "transformer"):
    models.get_model("resnet18")


# ----------------------------------------------------------------------------
# Output shapes.


def test_resnet_output_shape(resnet_variables):
  assert apply(ResNet(), resnet_variables, IMAGES,
               train=False).shape == (4, 10)


def test_vgg_output_shapes(vgg_bn_variables):
  assert apply(VGG(use_batch_norm=True), vgg_bn_variables, IMAGES,
               train=False).shape == (4, 10)
  model = models.get_model("vgg11", num_classes=100)
  variables = abstract_init(model, IMAGES, train=False)
  assert jax.eval_shape(functools.partial(model.apply, train=False),
                        variables, IMAGES).shape == (4, 100)


def test_lstm_output_shapes_and_carry():
  model = models.get_model("lstm", vocab_size=50)
  tokens = jnp.zeros((3, 7), jnp.int32)
  carry = model.initial_carry(3)
  assert jax.tree.map(jnp.shape, carry) == (((3, 128), (3, 128)),) * 2
  variables = abstract_init(model, tokens, carry, train=False)
  logits, new_carry = jax.eval_shape(
      functools.partial(model.apply, train=False), variables, tokens, carry)
  assert logits.shape == (3, 7, 50)
  assert jax.tree.map(jnp.shape, new_carry) == jax.tree.map(jnp.shape, carry)


def test_transformer_output_shapes(transformer_setup):
  model, params, src, tgt = transformer_setup  # src (3, 6), tgt (3, 5)
  variables = {"params": params}
  assert apply(model, variables, src, tgt, train=False).shape == (3, 5, 19)
  encoded = apply(model, variables, src, train=False,
                  method=Transformer.encode)
  assert encoded.shape == (3, 6, 32)
  logits = apply(model, variables, encoded, src, tgt, train=False,
                 method=Transformer.decode)
  assert logits.shape == (3, 5, 19)


# ----------------------------------------------------------------------------
# Initialisation.


def test_resnet_init(resnet_variables):
  params = resnet_variables["params"]
  kernel = params["stage3_block3"]["conv2"]["kernel"]  # (3, 3, 64, 64)
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (3 * 3 * 64)),
                             rtol=0.03)
  np.testing.assert_allclose(np.mean(kernel), 0.0, atol=0.002)
  shortcut = params["stage2_block1"]["shortcut_conv"]["kernel"]
  assert shortcut.shape == (1, 1, 16, 32)
  for name, bn in (("bn_init", params["bn_init"]),
                   ("bn2", params["stage1_block1"]["bn2"])):
    np.testing.assert_array_equal(bn["scale"], 1.0, err_msg=name)
    np.testing.assert_array_equal(bn["bias"], 0.0, err_msg=name)
  # PyTorch's nn.Linear default: U(±1/sqrt(fan_in)) with fan_in 64.
  head = params["head"]
  assert np.max(np.abs(head["kernel"])) <= 1 / 8
  assert np.max(np.abs(head["bias"])) <= 1 / 8


def test_vgg_init(vgg_bn_variables):
  params = vgg_bn_variables["params"]
  kernel = params["conv8"]["kernel"]  # (3, 3, 256, 256)
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (3 * 3 * 256)),
                             rtol=0.02)
  np.testing.assert_array_equal(params["bn8"]["scale"], 1.0)
  assert "bias" not in params["conv8"]


def test_lstm_init():
  model = LSTMLanguageModel()
  params = init(model, jnp.zeros((1, 1), jnp.int32), model.initial_carry(1),
                train=False)["params"]
  embedding = np.asarray(params["embed"]["embedding"])  # 4.3M draws
  assert np.max(np.abs(embedding)) <= 0.1
  assert np.max(np.abs(embedding)) > 0.0999
  np.testing.assert_allclose(np.var(embedding), 0.1**2 / 3, rtol=0.01)
  np.testing.assert_array_equal(params["decoder_bias"], 0.0)
  bound = 1 / math.sqrt(128)
  for name in ("ii", "hf"):
    kernel = np.asarray(params["lstm1"][name]["kernel"])
    assert np.max(np.abs(kernel)) <= bound
    np.testing.assert_allclose(np.var(kernel), bound**2 / 3, rtol=0.05)
  assert np.max(np.abs(params["lstm2"]["hi"]["bias"])) <= bound


def test_transformer_init():
  model = Transformer(src_vocab_size=100, tgt_vocab_size=100,
                      num_encoder_layers=1, num_decoder_layers=1)
  tokens = jnp.ones((1, 2), jnp.int32)
  params = init(model, tokens, tokens, train=False)["params"]
  layer = params["decoder_layers_0"]
  # Attention kernels are (d_model, heads, head_dim), Xavier over 256 x 256.
  kernels = {
      "query": (layer["self_attention"]["query"]["kernel"], 256, 256),
      "cross_out": (layer["cross_attention"]["out"]["kernel"], 256, 256),
      "ffn_hidden": (layer["ffn"]["hidden"]["kernel"], 256, 1024),
      "ffn_out": (layer["ffn"]["out"]["kernel"], 1024, 256),
  }
  for name, (kernel, fan_in, fan_out) in kernels.items():
    kernel = np.asarray(kernel)
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert kernel.size == fan_in * fan_out, name
    assert np.max(np.abs(kernel)) <= bound, name
    assert np.max(np.abs(kernel)) > 0.99 * bound, name
    np.testing.assert_allclose(np.var(kernel), bound**2 / 3, rtol=0.05,
                               err_msg=name)
  np.testing.assert_array_equal(layer["ffn"]["hidden"]["bias"], 0.0)
  np.testing.assert_array_equal(layer["ffn_norm"]["scale"], 1.0)
  np.testing.assert_allclose(np.std(params["src_embed"]["embedding"]),
                             256**-0.5, rtol=0.05)


# ----------------------------------------------------------------------------
# BatchNorm and dtypes.


def test_batch_norm_train_updates_and_eval_uses_running_stats(
    resnet_variables):
  model = ResNet()
  logits, updates = apply(model, resnet_variables, IMAGES, train=True,
                          mutable=("batch_stats",))
  assert logits.shape == (4, 10)
  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic,
  # here for the first BN, whose running statistics start at (0, 1).
  conv = nn.Conv(16, (3, 3), padding=1, use_bias=False)
  features = conv.apply({"params": resnet_variables["params"]["conv_init"]},
                        IMAGES)
  stats = updates["batch_stats"]["bn_init"]
  np.testing.assert_allclose(stats["mean"], 0.1 * features.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"],
                             0.9 + 0.1 * features.var((0, 1, 2)), rtol=1e-4)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b),
                         resnet_variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))

  updated = {"params": resnet_variables["params"], **updates}
  eval_logits = apply(model, updated, IMAGES, train=False)
  initial_eval_logits = apply(model, resnet_variables, IMAGES, train=False)
  assert not np.allclose(eval_logits, initial_eval_logits, atol=1e-3)
  # Eval mode normalises with the running statistics: no batch dependence.
  shuffled = apply(model, updated, IMAGES[::-1], train=False)
  np.testing.assert_allclose(shuffled[::-1], eval_logits, rtol=1e-4,
                             atol=1e-5)
  train_logits = apply(model, updated, IMAGES[::-1], train=True,
                       mutable=("batch_stats",))[0]
  assert not np.allclose(train_logits, shuffled, atol=1e-3)


def test_vgg_batch_norm_updates_batch_stats(vgg_bn_variables):
  _, updates = apply(VGG(use_batch_norm=True), vgg_bn_variables, IMAGES,
                     train=True, mutable=("batch_stats",))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b),
                         vgg_bn_variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))


def float_dtypes(tree) -> set[jnp.dtype]:
  return {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


F32, BF16 = jnp.dtype("float32"), jnp.dtype("bfloat16")


def test_resnet_bfloat16_activations_and_float32_params(resnet_variables):
  model = ResNet(dtype=jnp.bfloat16)
  assert float_dtypes(abstract_init(model, IMAGES, train=False)) == {F32}
  logits, state = apply(model, resnet_variables, IMAGES, train=True,
                        mutable=("batch_stats",), capture_intermediates=True)
  assert logits.dtype == BF16
  activations = jax.tree.leaves(state["intermediates"])
  assert len(activations) > 40
  assert float_dtypes(activations) == {BF16}
  assert float_dtypes(state["batch_stats"]) == {F32}


def test_lstm_bfloat16(small_lstm):
  model, variables, tokens = small_lstm
  model = model.clone(dtype=jnp.bfloat16)
  carry = model.initial_carry(2)
  assert float_dtypes(abstract_init(model, tokens, carry, train=False)) == {
      F32}
  logits, carry = apply(model, variables, tokens, carry, train=False)
  assert logits.dtype == BF16
  assert float_dtypes(carry) == {F32}


def test_transformer_bfloat16(transformer_setup):
  model, params, src, tgt = transformer_setup
  model = model.clone(dtype=jnp.bfloat16)
  assert float_dtypes(abstract_init(model, src, tgt, train=False)) == {F32}
  assert apply(model, {"params": params}, src, tgt,
               train=False).dtype == BF16


# ----------------------------------------------------------------------------
# LSTM behaviour.


def test_lstm_carry_continues_the_sequence(small_lstm):
  model, variables, tokens = small_lstm
  carry = model.initial_carry(2)
  whole, whole_carry = apply(model, variables, tokens, carry, train=False)
  first, mid_carry = apply(model, variables, tokens[:, :6], carry,
                           train=False)
  second, end_carry = apply(model, variables, tokens[:, 6:], mid_carry,
                            train=False)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole,
                             rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(end_carry), jax.tree.leaves(whole_carry)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lstm_dropout_only_in_train_mode(small_lstm):
  model, variables, tokens = small_lstm
  carry = model.initial_carry(2)
  train_apply = jax.jit(lambda rng: model.apply(
      variables, tokens, carry, train=True, rngs={"dropout": rng})[0])
  assert not np.allclose(train_apply(jax.random.key(1)),
                         train_apply(jax.random.key(2)))
  np.testing.assert_array_equal(
      apply(model, variables, tokens, carry, train=False)[0],
      apply(model, variables, tokens, carry, train=False)[0])


def test_language_model_loss_is_the_mean_over_tokens():
  logits = jax.random.normal(KEY, (2, 3, 5))
  targets = jnp.array([[0, 1, 2], [3, 4, 0]])
  log_probs = jax.nn.log_softmax(logits)
  expected = -np.mean(np.take_along_axis(log_probs, targets[..., None], -1))
  np.testing.assert_allclose(models.language_model_loss(logits, targets),
                             expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# Transformer masks, loss and decoding.


def test_source_padding_is_masked(transformer_setup):
  model, params, src, tgt = transformer_setup
  variables = {"params": params}
  logits = apply(model, variables, src, tgt, train=False)
  # More padding: nothing attends to pad positions, so nothing changes.
  more_padding = jnp.pad(src, ((0, 0), (0, 4)))
  np.testing.assert_allclose(
      apply(model, variables, more_padding, tgt, train=False), logits,
      rtol=1e-5, atol=1e-5)
  encoded = apply(model, variables, more_padding, train=False,
                  method=Transformer.encode)
  reference = apply(model, variables, src, train=False,
                    method=Transformer.encode)
  np.testing.assert_allclose(encoded[1, :3], reference[1, :3], rtol=1e-5,
                             atol=1e-5)
  # A real token in place of a pad does change the outputs of that sentence.
  changed = apply(model, variables, src.at[1, 4].set(7), tgt, train=False)
  assert not np.allclose(changed[1], logits[1], atol=1e-4)
  np.testing.assert_allclose(changed[0], logits[0], rtol=1e-5, atol=1e-5)


def test_decoder_is_causal(transformer_setup):
  model, params, src, tgt = transformer_setup
  logits = apply(model, {"params": params}, src, tgt, train=False)
  changed = apply(model, {"params": params}, src, tgt.at[:, 2].set(17),
                  train=False)
  np.testing.assert_allclose(changed[:, :2], logits[:, :2], rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(changed[:, 2:], logits[:, 2:], atol=1e-4)


def test_transformer_dropout_only_in_train_mode(transformer_setup):
  model, params, src, tgt = transformer_setup
  train_apply = jax.jit(lambda rng: model.apply(
      {"params": params}, src, tgt, train=True, rngs={"dropout": rng}))
  assert not np.allclose(train_apply(jax.random.key(1)),
                         train_apply(jax.random.key(2)))


def test_label_smoothed_cross_entropy_ignores_pad():
  logits = jax.random.normal(KEY, (2, 4, 6))
  targets = jnp.array([[3, 4, 5, 0], [1, 0, 0, 0]])
  loss = models.label_smoothed_cross_entropy(logits, targets, 0.1)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  smoothed = 0.9 * np.eye(6)[targets] + 0.1 / 6
  per_token = -(smoothed * log_probs).sum(-1)
  mask = np.asarray(targets) != PAD
  np.testing.assert_allclose(loss, per_token[mask].mean(), rtol=1e-6)
  # The logits at pad positions do not matter.
  other = logits.at[:, 3].set(100.0)
  np.testing.assert_allclose(
      models.label_smoothed_cross_entropy(other, targets, 0.1), loss,
      rtol=1e-6)


def teacher_forced_score(model, params, src, tokens, alpha):
  """Length-penalised log-probability of decoded ``tokens``, and the logits.

  Mirrors the decoders: the pad token is excluded from the softmax, and a
  hypothesis counts its tokens up to and including EOS.
  """
  tgt_in = jnp.concatenate(
      [jnp.full((tokens.shape[0], 1), BOS, jnp.int32), tokens[:, :-1]], 1)
  logits = apply(model, {"params": params}, src, tgt_in, train=False)
  logits = logits.at[..., PAD].set(models.transformer.NEG_INF)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  token_lp = np.take_along_axis(log_probs, np.asarray(tokens)[..., None],
                                -1)[..., 0]
  mask = np.asarray(tokens) != PAD
  lengths = mask.sum(1)
  return (token_lp * mask).sum(1) / ((5 + lengths) / 6)**alpha, logits


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_decode_and_beam_search(seed):
  model = small_transformer()
  key_src, key_params = jax.random.split(jax.random.key(seed, impl="rbg"))
  src = jax.random.randint(key_src, (6, 7), 3, 23).at[3:, 5:].set(PAD)
  params = init(model, src, src, key=key_params, train=False)["params"]
  max_len, alpha = 12, 0.6

  greedy = models.greedy_decode(model, params, src, max_len=max_len,
                                bos_id=BOS, eos_id=EOS)
  assert greedy.shape == (6, max_len)
  # The cached decoder agrees with the full decoder: each greedy token is the
  # argmax of the teacher-forced logits on the greedy output.
  greedy_score, logits = teacher_forced_score(model, params, src, greedy,
                                              alpha)
  generated = np.asarray(greedy) != PAD
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1))[generated],
                                np.asarray(greedy)[generated])
  # Generation stops at EOS: only pads follow it.
  for row in np.asarray(greedy):
    eos = np.flatnonzero(row == EOS)
    if eos.size:
      assert np.all(row[eos[0] + 1:] == PAD)

  beam1, beam1_score = models.beam_search(
      model, params, src, beam_size=1, max_len=max_len, alpha=alpha,
      bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(beam1, greedy)
  np.testing.assert_allclose(beam1_score, greedy_score, rtol=1e-4, atol=1e-4)

  beam4, beam4_score = models.beam_search(
      model, params, src, beam_size=4, max_len=max_len, alpha=alpha,
      bos_id=BOS, eos_id=EOS)
  assert beam4.shape == (6, max_len)
  assert np.all(np.asarray(beam4_score) >= np.asarray(greedy_score) - 1e-4)
  recomputed, _ = teacher_forced_score(model, params, src, beam4, alpha)
  np.testing.assert_allclose(beam4_score, recomputed, rtol=1e-4, atol=1e-4)


# A trigram "language model" for the search loops: the next-token
# distribution depends on the last two tokens, the older one kept in the cache,
# so that a wrong beam reordering of the cache changes the scores. Tokens: pad,
# BOS, EOS and three words; one table per sentence.
VOCAB = 6


def trigram_log_probs(seed: int, batch: int) -> np.ndarray:
  logits = 2.0 * jax.random.normal(jax.random.key(seed, impl="rbg"),
                                   (batch, VOCAB, VOCAB, VOCAB))
  logits = logits.at[..., PAD].set(models.transformer.NEG_INF)
  return np.asarray(jax.nn.log_softmax(logits))


def trigram_search(log_probs: np.ndarray, beam_size: int | None,
                   max_len: int, alpha: float = 0.6):
  """Greedy search (beam_size None) or beam search over the trigram model."""
  batch = log_probs.shape[0]
  rows = batch * (beam_size or 1)
  table = jnp.asarray(log_probs)

  def step(tokens, cache):
    sentence = jnp.arange(rows) // (beam_size or 1)
    return (table[sentence, cache["previous"], tokens],
            {"previous": tokens, "steps": cache["steps"] + 1})

  cache = {"previous": jnp.full((rows,), BOS, jnp.int32),
           "steps": jnp.array(0)}
  kwargs = dict(batch_size=batch, max_len=max_len, bos_id=BOS, eos_id=EOS)
  if beam_size is None:
    return jax.jit(lambda c: models.greedy_search(step, c, **kwargs))(cache)
  return jax.jit(lambda c: models.beam_search_from_step(
      step, c, beam_size=beam_size, alpha=alpha, **kwargs))(cache)


def trigram_score(log_probs: np.ndarray, tokens, alpha: float = 0.6) -> float:
  """Length-penalised log-probability of one decoded row (pad-terminated)."""
  tokens = [int(t) for t in tokens if t != PAD]
  context, total = (BOS, BOS), 0.0
  for token in tokens:
    total += log_probs[context + (token,)]
    context = (context[1], token)
  return total / ((5 + len(tokens)) / 6)**alpha


def exhaustive_best(log_probs: np.ndarray, max_len: int,
                    alpha: float = 0.6) -> tuple[float, tuple[int, ...]]:
  """The best hypothesis: ended by EOS, or max_len tokens long."""
  words = [t for t in range(VOCAB) if t not in (PAD, EOS)]
  best = (-np.inf, ())
  for length in range(1, max_len + 1):
    last_tokens = [EOS] + (words if length == max_len else [])
    for prefix in itertools.product(words, repeat=length - 1):
      for last in last_tokens:
        sequence = prefix + (last,)
        best = max(best, (trigram_score(log_probs, sequence, alpha),
                          sequence))
  return best


def test_beam_search_of_size_one_is_greedy_search():
  log_probs = trigram_log_probs(seed=3, batch=16)
  greedy = np.asarray(trigram_search(log_probs, None, max_len=5))
  beam, scores = trigram_search(log_probs, 1, max_len=5)
  np.testing.assert_array_equal(beam, greedy)
  # The case mix this test needs: EOS at several positions and never.
  eos_positions = {int(np.argmax(row == EOS)) if EOS in row else None
                   for row in greedy}
  assert len(eos_positions - {None}) >= 2 and None in eos_positions
  for row, pad_from in zip(greedy, np.argmax(greedy == EOS, axis=1) + 1):
    if EOS in row:
      assert np.all(row[pad_from:] == PAD)
  for b in range(16):
    np.testing.assert_allclose(scores[b], trigram_score(log_probs[b],
                                                        greedy[b]),
                               rtol=1e-5)


def test_beam_search_matches_exhaustive_search():
  max_len, batch = 4, 6
  log_probs = trigram_log_probs(seed=4, batch=batch)
  # 128 beams hold every live hypothesis of 4 words over 3 steps, and every
  # EOS candidate is among the 128 best: the search is exhaustive.
  exact_tokens, exact_scores = trigram_search(log_probs, 128, max_len)
  small_tokens, small_scores = trigram_search(log_probs, 2, max_len)
  for b in range(batch):
    best_score, best_sequence = exhaustive_best(log_probs[b], max_len)
    np.testing.assert_allclose(exact_scores[b], best_score, rtol=1e-5)
    row = [int(t) for t in exact_tokens[b] if t != PAD]
    assert tuple(row) == best_sequence
    # A narrower beam finds a hypothesis no better, scored consistently.
    np.testing.assert_allclose(
        small_scores[b], trigram_score(log_probs[b], small_tokens[b]),
        rtol=1e-5)
    assert small_scores[b] <= best_score + 1e-6


def test_decoding_rejects_too_long_outputs(transformer_setup):
  model, params, src, _ = transformer_setup
  with pytest.raises(ValueError, match="max_len"):
    models.greedy_decode(model, params, src, max_len=33, bos_id=BOS,
                         eos_id=EOS)
