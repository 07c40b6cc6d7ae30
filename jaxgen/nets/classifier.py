"""A small convolutional classifier, also jaxgen's feature extractor for
sample-quality metrics (its penultimate layer)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class ConvClassifier(nn.Module):
  """Pairs of 3x3 convs per width, stride 2 between widths, then dense layers.

  __call__ returns (logits, features), features being the penultimate
  activations used for Frechet distance, KID and precision/recall.
  """
  widths: Sequence[int]
  hidden: int
  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    x = x_BHWC * 2.0 - 1.0
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2) if i == 0 else (1, 1))(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      if i + 1 < len(self.widths):
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.hidden)(x))
    dropped = nn.Dropout(self.dropout, deterministic=not train)(features)
    return nn.Dense(self.num_classes)(dropped), features
