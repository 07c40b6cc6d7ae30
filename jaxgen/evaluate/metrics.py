"""Sample-quality metrics from features: Frechet distance, KID, precision/recall,
class coverage. Pure numpy in float64, so the numbers do not depend on the
accelerator; features are computed on device, the statistics here.

References:
  Frechet distance: Heusel et al. 2017 (FID), on any feature extractor.
  KID: Binkowski et al. 2018, cubic polynomial kernel, unbiased MMD^2.
  Precision/recall: Kynkaanniemi et al. 2019, k-NN manifolds (k = 3).
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of features, in float64."""
  f = np.asarray(features_ND, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray,
                     mean_b: np.ndarray, cov_b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

  tr((C_a C_b)^(1/2)) is computed as the sum of square roots of the
  eigenvalues of C_a^(1/2) C_b C_a^(1/2), a symmetric PSD matrix with the same
  eigenvalues as C_a C_b: no complex parts to discard, unlike scipy's sqrtm.
  """
  diff = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
  root_a = _sqrt_psd(np.asarray(cov_a, np.float64))
  middle = root_a @ np.asarray(cov_b, np.float64) @ root_a
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0, None)))
  value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
  return float(max(value, 0.0))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x_ND: np.ndarray, y_MD: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel (one KID subset)."""
  x, y = np.asarray(x_ND, np.float64), np.asarray(y_MD, np.float64)
  n, m = len(x), len(y)
  k_xx, k_yy, k_xy = (_polynomial_kernel(x, x), _polynomial_kernel(y, y),
                      _polynomial_kernel(x, y))
  sum_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
  sum_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(sum_xx + sum_yy - 2 * k_xy.mean())


def kernel_inception_distance(real_ND: np.ndarray, fake_MD: np.ndarray, *,
                              num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
  """KID: mean of unbiased MMD^2 over random subsets, and its standard error."""
  rng = np.random.default_rng(seed)
  size = min(subset_size, len(real_ND), len(fake_MD))
  values = []
  for _ in range(num_subsets):
    r = real_ND[rng.choice(len(real_ND), size, replace=False)]
    f = fake_MD[rng.choice(len(fake_MD), size, replace=False)]
    values.append(mmd2_unbiased(r, f))
  values = np.asarray(values)
  stderr = values.std(ddof=1) / np.sqrt(num_subsets) if num_subsets > 1 else 0.0
  return float(values.mean()), float(stderr)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
  return np.maximum(d, 0.0)


def _kth_neighbour_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
  """Squared distance of each point to its k-th nearest other point."""
  radii = np.empty(len(x))
  for start in range(0, len(x), chunk):
    d = _squared_distances(x[start:start + chunk], x)
    # Index k, not k-1: each point's nearest "neighbour" is itself at 0.
    radii[start:start + chunk] = np.partition(d, k, axis=1)[:, k]
  return radii


def _inside_manifold(points: np.ndarray, support: np.ndarray,
                     radii: np.ndarray, chunk: int) -> np.ndarray:
  inside = np.zeros(len(points), bool)
  for start in range(0, len(points), chunk):
    d = _squared_distances(points[start:start + chunk], support)
    inside[start:start + chunk] = (d <= radii[None, :]).any(1)
  return inside


def precision_recall(real_ND: np.ndarray, fake_MD: np.ndarray, k: int = 3,
                     chunk: int = 2048) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019).

  Precision: fraction of fake samples inside the real k-NN manifold (quality).
  Recall: fraction of real samples inside the fake k-NN manifold (coverage;
  mode collapse shows up as low recall).
  """
  real = np.asarray(real_ND, np.float64)
  fake = np.asarray(fake_MD, np.float64)
  real_radii = _kth_neighbour_radii(real, k, chunk)
  fake_radii = _kth_neighbour_radii(fake, k, chunk)
  precision = _inside_manifold(fake, real, real_radii, chunk).mean()
  recall = _inside_manifold(real, fake, fake_radii, chunk).mean()
  return float(precision), float(recall)


def class_coverage(predicted_labels: np.ndarray, num_classes: int
                   ) -> dict[str, float | int | list[float]]:
  """How generated samples spread over the classes a classifier sees in them.

  classes_covered counts classes holding at least half their uniform share
  (5% of samples for 10 classes); kl_to_uniform is 0 for a perfectly even
  spread and log(num_classes) for a single repeated class.
  """
  counts = np.bincount(np.asarray(predicted_labels), minlength=num_classes)
  fractions = counts / counts.sum()
  nonzero = fractions[fractions > 0]
  kl = float(np.sum(nonzero * np.log(nonzero * num_classes)))
  return {
      "class_fractions": [round(float(f), 5) for f in fractions],
      "classes_covered": int(np.sum(fractions >= 0.5 / num_classes)),
      "min_class_fraction": float(fractions.min()),
      "kl_to_uniform": kl,
  }
