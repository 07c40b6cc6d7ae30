"""Scalars to metrics.jsonl and TensorBoard events; only process 0 writes."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image


class MetricWriter:
  """Appends one JSON object per logged step, and mirrors it to TensorBoard.

  TensorBoard events are written with tensorboard's own event writer, so a run
  never imports TensorFlow just to log.
  """

  def __init__(self, workdir: str | Path, resume_step: int = 0):
    self.path = Path(workdir) / "metrics.jsonl"
    self._active = jax.process_index() == 0
    self._events = None
    self._last: tuple[dict, int] | None = None  # last line written, its offset
    if not self._active:
      return
    # Steps after the checkpoint we resume from will be recomputed (identically)
    # and logged again; drop their stale lines so each step appears once.
    if self.path.exists():
      kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
    self._events = EventFileWriter(str(Path(workdir) / "events"))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """Logs scalars at a step; a second call for the same step (e.g. the
    mode-collapse monitor after the loss means) joins that step's line, so
    metrics.jsonl keeps one object per step."""
    if not self._active:
      return
    record = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
    with self.path.open("r+" if self.path.exists() else "w") as f:
      f.seek(0, io.SEEK_END)
      if self._last is not None and self._last[0]["step"] == record["step"]:
        record = {**self._last[0], **record}
        f.seek(self._last[1])
        f.truncate()
      offset = f.tell()
      f.write(json.dumps(record) + "\n")
    self._last = (record, offset)
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items() if isinstance(v, (int, float))]
    self._add(step, summary_pb2.Summary(value=values))

  def write_image(self, step: int, tag: str, image_hwc: np.ndarray) -> None:
    if not self._active:
      return
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    image = np.asarray(image_hwc)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buffer, format="PNG")
    encoded = summary_pb2.Summary.Image(
        height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
        encoded_image_string=buffer.getvalue())
    self._add(step, summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, image=encoded)]))

  def _add(self, step: int, summary) -> None:
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


def _jsonable(value):
  value = float(value) if isinstance(value, (np.floating, np.integer)) else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible as strings
  return value


def read_jsonl(path: str | Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
