"""The one way to change fields of a run configuration: dotted keys to values.

The command line (`--set optimizer.base_learning_rate=0.15`), the presets,
the sweeps and the studies all change configurations with `apply`. A value
given as an int for a float field becomes a float; `optimizer.method` is
applied first and reshapes the `optimizer` block to the new method's fields
(`experiments.methods.switch_method`), so that the method's own fields can
follow it in the same overrides.
"""

from __future__ import annotations

import ast
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from experiments import methods

METHOD_KEY = "optimizer.method"


def parse_value(text: str) -> Any:
  """A Python literal when `text` is one, else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse(assignments: Sequence[str]) -> dict[str, Any]:
  """`["a.b=1", ...]` (command-line `--set`) as `{"a.b": 1, ...}`.

  Raises:
    ValueError: an assignment without "=".
  """
  overrides = {}
  for assignment in assignments:
    key, sep, text = assignment.partition("=")
    if not sep:
      raise ValueError(
          f"Override {assignment!r} is not of the form key=value.")
    overrides[key.strip()] = parse_value(text)
  return overrides


def apply(config: ml_collections.ConfigDict,
          overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with each dotted key of `overrides` set to its value.

  Raises:
    ValueError: an unknown field (model kwargs excepted: they are open-ended
      module attributes), or an optimizer field foreign to the method.
  """
  config = config.copy_and_resolve_references()
  if METHOD_KEY in overrides:
    config.optimizer = methods.switch_method(config.optimizer,
                                             overrides[METHOD_KEY])
  for key, value in overrides.items():
    if key == METHOD_KEY:
      continue
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      if name not in node:
        raise ValueError(f"Unknown config field {key!r} (no {name!r}).")
      node = node[name]
    if leaf not in node and parents[-1:] != ["kwargs"]:
      if parents == ["optimizer"]:
        raise ValueError(
            f"{key} is not a field of optimizer.method="
            f"{config.optimizer.method!r}; its fields are "
            f"{', '.join(sorted(node.keys()))}.")
      raise ValueError(f"Unknown config field {key!r}; known fields here: "
                       f"{', '.join(sorted(node.keys()))}.")
    if (isinstance(node.get(leaf), float) and isinstance(value, int)
        and not isinstance(value, bool)):
      value = float(value)
    node[leaf] = value
  return config


def without_foreign_fields(config: ml_collections.ConfigDict
                           ) -> ml_collections.ConfigDict:
  """`config` without the optimizer fields its method does not read.

  Configurations saved before methods had their own fields carry every
  method's fields; the method never read the others, so dropping them
  changes nothing the run does.
  """
  config = config.copy_and_resolve_references()
  for field in methods.foreign_fields(config.optimizer):
    del config.optimizer[field]
  return config


def load(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """A run's saved `config.json`, as the configuration to train it again.

  Raises:
    FileNotFoundError: no such file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No such config file: {path}.")
  return without_foreign_fields(
      ml_collections.ConfigDict(json.loads(path.read_text())))
