"""Moses tokenization of one language (sacremoses), lowercased by default.

Choice: sentences are lowercased before Moses tokenization (the common
Multi30k set-up, as in the dataset's own `*.lc.norm.tok` files; it also
shrinks the min-frequency-5 vocabularies to about 3.3k English / 3.6k German
words), and BLEU (`experiments.input_pipeline.bleu`) is then case-insensitive
against the raw references.
"""

from __future__ import annotations

from typing import Sequence

import sacremoses


class Tokenizer:
  """Moses tokenizer/detokenizer for one language (sacremoses)."""

  def __init__(self, lang: str, lowercase: bool = True):
    """Creates the tokenizer.

    Args:
      lang: language code, `"en"` or `"de"`.
      lowercase: lowercase before tokenizing (see the module docstring).
    """
    self.lang = lang
    self.lowercase = lowercase
    self._tokenizer = sacremoses.MosesTokenizer(lang)
    self._detokenizer = sacremoses.MosesDetokenizer(lang)

  def tokenize(self, sentence: str) -> list[str]:
    """Moses tokens; no XML escaping, so `&` stays `&`."""
    if self.lowercase:
      sentence = sentence.lower()
    return self._tokenizer.tokenize(sentence, escape=False)

  def detokenize(self, tokens: Sequence[str]) -> str:
    """Joins Moses tokens back into text."""
    return self._detokenizer.detokenize(list(tokens))
