"""Reads TensorBoard event files without TensorBoard (tests only).

An event file is a sequence of TFRecords (length, its masked CRC, the
payload, its masked CRC), each payload an `Event` protocol buffer.
"""

import pathlib
import struct

from tensorboardX.proto import event_pb2


def _records(path):
  data = path.read_bytes()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    yield data[offset + 12:offset + 12 + length]
    offset += 12 + length + 4


def tensorboard_scalars(tb_dir):
  """`(step, tag) -> value` over all event files, and `(step, tag) -> count`."""
  scalars, counts = {}, {}
  for path in sorted(pathlib.Path(tb_dir).glob("events.out.tfevents.*")):
    for payload in _records(path):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        key = (event.step, value.tag)
        scalars[key] = value.simple_value
        counts[key] = counts.get(key, 0) + 1
  return scalars, counts


def without_throughput(scalars):
  """The scalars less `throughput`, which is wall-clock time, not a result."""
  return {key: value for key, value in scalars.items()
          if key[1] != "throughput"}
