"""Pictures of a run: image grids, the progress animation, training curves."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] (or uint8) -> uint8, clipping out-of-range values."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(images: np.ndarray, num_cols: int | None = None, pad: int = 2,
         pad_value: int = 255) -> np.ndarray:
  """NHWC images -> one HWC uint8 image, row-major, with `pad` pixels between."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  num_cols = num_cols or int(math.ceil(math.sqrt(n)))
  num_rows = int(math.ceil(n / num_cols))
  out = np.full((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c),
                pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, num_cols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[y:y + h, x:x + w] = images[i]
  return out


def save_png(image_hwc: np.ndarray, path: str | Path, scale: int = 1) -> None:
  image = Image.fromarray(_squeeze_gray(to_uint8(image_hwc)))
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale),
                         Image.NEAREST)
  image.save(path)


def _squeeze_gray(image: np.ndarray) -> np.ndarray:
  return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def write_gif(frame_paths: Sequence[str | Path], path: str | Path,
              labels: Sequence[str] | None = None, frame_ms: int = 400) -> None:
  """Assembles PNG frames into an animated GIF, each captioned (e.g. its step)."""
  frames = []
  for i, frame_path in enumerate(frame_paths):
    frame = Image.open(frame_path).convert("RGB")
    if labels is not None:
      captioned = Image.new("RGB", (frame.width, frame.height + 14), "white")
      captioned.paste(frame, (0, 14))
      ImageDraw.Draw(captioned).text((2, 1), labels[i], fill="black")
      frame = captioned
    frames.append(frame)
  if not frames:
    return
  # Hold the last frame so the final state is visible before the loop restarts.
  durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 5]
  frames[0].save(path, save_all=True, append_images=frames[1:],
                 duration=durations, loop=0)


def write_gif_arrays(frames_HWC: Sequence[np.ndarray], path: str | Path,
                     scale: int = 1, frame_ms: int = 250) -> None:
  """An animated GIF of image arrays (uint8 or [0, 1] floats), the last frame
  held longer."""
  images = []
  for frame in frames_HWC:
    image = Image.fromarray(_squeeze_gray(to_uint8(np.asarray(frame))))
    images.append(image.resize((image.width * scale, image.height * scale),
                               Image.NEAREST))
  if not images:
    return
  durations = [frame_ms] * (len(images) - 1) + [frame_ms * 8]
  images[0].save(path, save_all=True, append_images=images[1:],
                 duration=durations, loop=0)


def plot_curves(records: Sequence[dict], path: str | Path,
                keys: Sequence[str] | None = None, title: str = "",
                groups: Sequence[Sequence[str]] = ()) -> None:
  """One panel per metric against step, from metrics.jsonl records; each of
  `groups` (e.g. ("d_real", "d_fake")) shares one panel with a legend."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  if keys is None:
    skip = {"step", "epoch", "steps_per_second", "wall_seconds"}
    keys = sorted({k for r in records for k, v in r.items()
                   if k not in skip and isinstance(v, (int, float))})
  present = set(keys)
  panels = [tuple(k for k in group if k in present) for group in groups]
  panels = [p for p in panels if p]
  grouped = {k for p in panels for k in p}
  panels += [(k,) for k in keys if k not in grouped]
  if not records or not panels:
    return
  cols = min(3, len(panels))
  rows = int(math.ceil(len(panels) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows),
                           squeeze=False)
  for ax, panel in zip(axes.flat, panels):
    for key in panel:
      points = [(r["step"], r[key]) for r in records if key in r]
      ax.plot(*zip(*points), lw=1.2, label=key)
    ax.set_title(" vs ".join(panel), fontsize=10)
    if len(panel) > 1:
      ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_latent_scatter(points_N2: np.ndarray, labels_N: np.ndarray,
                        class_names: Sequence[str], path: str | Path,
                        title: str = "", axis_labels: tuple[str, str] = ("z0", "z1")
                        ) -> None:
  """Scatter of 2-D latent points coloured by class."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.4, 5.6))
  cmap = plt.get_cmap("tab10")
  for c, name in enumerate(class_names):
    chosen = labels_N == c
    ax.scatter(points_N2[chosen, 0], points_N2[chosen, 1], s=3, alpha=0.6,
               color=cmap(c % 10), label=name, rasterized=True)
  ax.legend(markerscale=4, fontsize=8, loc="best", framealpha=0.8)
  ax.set_xlabel(axis_labels[0])
  ax.set_ylabel(axis_labels[1])
  ax.grid(alpha=0.3)
  if title:
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
