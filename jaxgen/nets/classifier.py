"""Small convolutional classifiers, also jaxgen's feature extractors for
sample-quality metrics (their penultimate layer).

Two architectures (`model.arch`):
- "plain": pairs of 3x3 convs per width, the first strided, max pooling
  between widths, no normalization (mnistnet).
- "bn_pool": per width a 3x3 conv, 2x2 max pooling, batch norm, GELU, a
  second 3x3 conv, batch norm, GELU; then a global max pool (cifar10net). The
  first conv sees the full-resolution image, and batch norm is what lets it
  reach 90% on CIFAR-10 in about ten epochs on two CPU cores.
Both end in a dense ReLU layer of `hidden` units (the features) and the
class logits. With `flip_average`, evaluation (train=False) runs the image and
its left-right mirror through the network and averages their logits and
features: the classifier is then exactly mirror-invariant, which on CIFAR-10
(whose classes are mirror-symmetric) is worth about 2 points of accuracy
(README). Training never averages.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets import max_pool

ARCHS = ("plain", "bn_pool")


def _with_mirrors(x_BHWC: jax.Array, averaged: bool) -> jax.Array:
  # One pass over 2B images: batch norm uses its running statistics at
  # evaluation, so the mirrors do not change how the originals are normalized.
  return jnp.concatenate([x_BHWC, x_BHWC[:, :, ::-1]]) if averaged else x_BHWC


def _mirror_mean(out: tuple[jax.Array, jax.Array], averaged: bool
                 ) -> tuple[jax.Array, jax.Array]:
  if not averaged:
    return out
  return tuple(0.5 * (a[:a.shape[0] // 2] + a[a.shape[0] // 2:]) for a in out)


def _head(x_BD: jax.Array, hidden: int, num_classes: int, dropout: float,
          train: bool) -> tuple[jax.Array, jax.Array]:
  features = nn.relu(nn.Dense(hidden)(x_BD))
  dropped = nn.Dropout(dropout, deterministic=not train)(features)
  return nn.Dense(num_classes)(dropped), features


class ConvClassifier(nn.Module):
  """Pairs of 3x3 convs per width, stride 2 between widths, then dense layers.

  __call__ returns (logits, features), features being the penultimate
  activations used for Frechet distance, KID and precision/recall.
  """
  widths: Sequence[int]
  hidden: int
  num_classes: int
  dropout: float = 0.0
  flip_average: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    averaged = self.flip_average and not train
    x = _with_mirrors(x_BHWC, averaged) * 2.0 - 1.0
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2) if i == 0 else (1, 1))(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      if i + 1 < len(self.widths):
        x = max_pool(x, 2)
    x = x.reshape(x.shape[0], -1)
    return _mirror_mean(_head(x, self.hidden, self.num_classes, self.dropout, train),
                        averaged)


class BNPoolClassifier(nn.Module):
  """conv -> pool -> BN -> GELU -> conv -> BN -> GELU per width, global max.

  Batch statistics live in the "batch_stats" collection: training applies the
  module with mutable=["batch_stats"] (train=True normalizes by the batch),
  evaluation and feature extraction use the running averages, so an image's
  features never depend on the other images in its batch.
  """
  widths: Sequence[int]
  hidden: int
  num_classes: int
  dropout: float = 0.0
  flip_average: bool = False
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    def norm_act(h):
      h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(h)
      return nn.gelu(h)
    averaged = self.flip_average and not train
    x = _with_mirrors(x_BHWC, averaged) * 2.0 - 1.0
    for width in self.widths:
      # Bias-free: the batch norm right after each conv has its own shift.
      x = nn.Conv(width, (3, 3), use_bias=False)(x)
      x = norm_act(max_pool(x, 2))
      x = norm_act(nn.Conv(width, (3, 3), use_bias=False)(x))
    x = jnp.max(x, axis=(1, 2))
    return _mirror_mean(_head(x, self.hidden, self.num_classes, self.dropout, train),
                        averaged)


def network_info(model: Any) -> dict[str, Any]:
  """What rebuilds the network from a config's `model` (kept in the
  classifier cache's info.json)."""
  return {"arch": model.arch, "widths": list(model.widths),
          "hidden": int(model.hidden), "dropout": float(model.dropout),
          "flip_average": bool(model.flip_average)}


def make_classifier_net(model: Mapping[str, Any], num_classes: int) -> nn.Module:
  """The network a classifier config (or a cached info.json's "model") names;
  caches written before `arch` and `flip_average` existed are "plain" without
  averaging."""
  arch = model.get("arch", "plain")
  if arch not in ARCHS:
    raise ValueError(f"classifier arch {arch!r} is unknown; one of {ARCHS}")
  cls = BNPoolClassifier if arch == "bn_pool" else ConvClassifier
  return cls(widths=tuple(model["widths"]), hidden=int(model["hidden"]),
             num_classes=num_classes, dropout=float(model["dropout"]),
             flip_average=bool(model.get("flip_average", False)))
