"""Corpus BLEU (sacreBLEU) of decoded translations against raw references."""

from __future__ import annotations

from typing import Sequence

import sacrebleu

from experiments.input_pipeline import common
from experiments.input_pipeline.multi30k import BOS_ID
from experiments.input_pipeline.multi30k import EOS_ID
from experiments.input_pipeline.multi30k import PAD_ID
from experiments.input_pipeline.tokenizer import Tokenizer


def decode_ids(ids: Sequence[int], vocab: common.Vocab) -> list[str]:
  """Tokens of one output: up to the first `<eos>`, without pad and bos."""
  tokens = []
  for i in ids:
    if i == EOS_ID:
      break
    if i not in (PAD_ID, BOS_ID):
      tokens.append(vocab.itos[i])
  return tokens


def bleu(hypotheses_ids: Sequence[Sequence[int]],
         references_text: Sequence[str], vocab: common.Vocab,
         tokenizer: Tokenizer) -> float:
  """Corpus sacreBLEU of decoded outputs against raw reference sentences.

  Args:
    hypotheses_ids: one id sequence per sentence (see `decode_ids`).
    references_text: the raw references, one per hypothesis.
    vocab: the target vocabulary.
    tokenizer: the target tokenizer, for detokenization; with `lowercase`
      the score is case-insensitive.

  Returns:
    The BLEU score in [0, 100].
  """
  if len(hypotheses_ids) != len(references_text):
    raise ValueError(f"{len(hypotheses_ids)} hypotheses but "
                     f"{len(references_text)} references.")
  hypotheses = [tokenizer.detokenize(decode_ids(ids, vocab))
                for ids in hypotheses_ids]
  return sacrebleu.corpus_bleu(hypotheses, [list(references_text)],
                               lowercase=tokenizer.lowercase).score
