"""Sample-quality metrics against closed forms and direct computations."""

import numpy as np
import pytest
import scipy.linalg

from jaxgen.evaluate import metrics


def random_covariance(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
  mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  std_a, std_b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
  got = metrics.frechet_distance(mean_a, np.diag(std_a ** 2), mean_b, np.diag(std_b ** 2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_reference():
  rng = np.random.default_rng(0)
  d = 16
  mean_a, mean_b = rng.normal(size=d), rng.normal(size=d)
  cov_a, cov_b = random_covariance(rng, d), random_covariance(rng, d)
  covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
  reference = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
               - 2 * np.trace(covmean))
  assert metrics.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(
      reference, rel=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero():
  features = np.random.default_rng(1).normal(size=(500, 8))
  mean, cov = metrics.feature_statistics(features)
  assert metrics.frechet_distance(mean, cov, mean, cov) == pytest.approx(0, abs=1e-9)


def test_mmd2_unbiased_matches_direct_double_sum():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1, size=(9, 3))
  k = lambda a, b: (a @ b / 3 + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
  yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
  xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_is_near_zero_for_same_distribution_and_positive_otherwise():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
  shifted = rng.normal(0.5, 1, size=(2000, 8))
  same, same_se = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=500)
  diff, diff_se = metrics.kernel_inception_distance(a, shifted, num_subsets=20,
                                                    subset_size=500)
  assert abs(same) < 4 * same_se + 1e-3
  assert diff > 10 * diff_se and diff > same


def test_precision_recall_identical_sets_and_collapse():
  rng = np.random.default_rng(4)
  real = rng.normal(size=(1000, 4))
  precision, recall = metrics.precision_recall(real, real.copy())
  assert precision == 1.0 and recall == 1.0
  # A generator that collapsed onto one small region: samples are realistic
  # (high precision) but cover little of the data (low recall).
  collapsed = real[np.argsort(np.linalg.norm(real - real[0], axis=1))[:1000 // 20]]
  collapsed = np.repeat(collapsed, 20, axis=0) + rng.normal(0, 1e-3, (1000, 4))
  precision, recall = metrics.precision_recall(real, collapsed)
  assert precision > 0.9 and recall < 0.2


def test_class_coverage():
  uniform = metrics.class_coverage(np.arange(1000) % 10, 10)
  assert uniform["classes_covered"] == 10
  assert uniform["kl_to_uniform"] == pytest.approx(0, abs=1e-12)
  collapsed = metrics.class_coverage(np.full(1000, 3), 10)
  assert collapsed["classes_covered"] == 1
  assert collapsed["kl_to_uniform"] == pytest.approx(np.log(10))
  assert collapsed["class_fractions"][3] == 1.0
