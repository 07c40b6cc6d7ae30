"""Evaluation end to end: classifier features, sample metrics, IWAE, determinism."""

import dataclasses
import importlib
import json
import threading

import numpy as np
import pytest

from conftest import with_first_test_images
from configs import vae_mnist
from jaxgen import configlib, data, evaluate, sharding, train
from jaxgen.evaluate import features, metrics


@pytest.fixture(scope="module")
def trained_vae(mnist, tmp_path_factory):
  config = vae_mnist.get_config("smoke")
  config.train.num_steps = 60
  config.train.progress_bar = False
  config.train.eval_at_end = False
  workdir = tmp_path_factory.mktemp("vae")
  run = train.train(config, workdir, mesh=sharding.make_mesh(1), dataset=mnist)
  return config, workdir, run.state


def test_classifier_trains_exports_and_loads(smoke_classifier):
  assert smoke_classifier["metrics"]["accuracy"]["mean"] > 0.8  # 200 steps of a tiny net
  extractor = features.load_extractor("mnist")
  assert extractor.name == "mnistnet"
  assert extractor.test_accuracy == smoke_classifier["metrics"]["accuracy"]["mean"]
  assert len(extractor.weights_sha256) == 64


def test_cifar10_classifier_smoke_trains_exports_and_extracts(cifar10, tmp_path,
                                                              monkeypatch):
  from configs import classifier_cifar10  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "cache"))
  config = classifier_cifar10.get_config("smoke")
  config.train.num_steps = 120
  config.train.batch_size = 64
  config.train.progress_bar = False
  config.train.eval_at_end = False
  run = train.train(config, tmp_path / "run", mesh=sharding.make_mesh(1),
                    dataset=cifar10)
  result = evaluate.run(run.setup, run.state)
  run.setup.family.export(run.state, result)   # as run.py does after training
  extractor = features.load_extractor("cifar10")
  assert extractor.name == "cifar10net"
  assert result["num_examples"] == len(cifar10.test)   # the 1,000 at hand
  assert extractor.test_accuracy == result["metrics"]["accuracy"]["mean"]
  # Chance is 10%; 120 steps of the smoke net already do better.
  assert extractor.test_accuracy > 0.15
  predicted, feats = features.extract(extractor, cifar10.test.images[:20])
  assert predicted.shape == (20,) and feats.shape == (20, config.model.hidden)


def test_tampered_classifier_weights_are_refused(smoke_classifier, tmp_path,
                                                 monkeypatch):
  del smoke_classifier
  source = features.classifier_dir("mnist")
  monkeypatch.setenv(features.CACHE_ENV, str(tmp_path))
  target = features.classifier_dir("mnist")
  target.mkdir(parents=True)
  (target / "info.json").write_text((source / "info.json").read_text())
  blob = bytearray((source / "params.msgpack").read_bytes())
  blob[-1] ^= 0xFF
  (target / "params.msgpack").write_bytes(bytes(blob))
  with pytest.raises(features.ExtractorMissingError, match="sha256"):
    features.load_extractor("mnist")
  monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "empty"))
  with pytest.raises(features.ExtractorMissingError,
                     match="configs/classifier_mnist.py"):
    features.load_extractor("mnist")
  with pytest.raises(features.ExtractorMissingError,
                     match="configs/classifier_cifar10.py"):
    features.load_extractor("cifar10")


def test_real_images_score_near_real_and_noise_and_collapse_far(smoke_classifier,
                                                                mnist):
  del smoke_classifier
  extractor = features.load_extractor("mnist")
  reference = features.reference_statistics(extractor, mnist.train, "train", "mnist")

  def scores(images):
    predicted, fake = features.extract(extractor, images)
    mean, cov = metrics.feature_statistics(fake)
    fd = metrics.frechet_distance(mean, cov, reference["mean"], reference["cov"])
    _, recall = metrics.precision_recall(reference["subset"][:len(fake)], fake)
    return fd, recall, metrics.class_coverage(predicted, 10)

  held_out = mnist.test.images[:2000]
  noise = np.random.default_rng(0).integers(0, 256, held_out.shape, np.uint8)
  ones = mnist.test.images[mnist.test.labels == 1][:200]
  collapsed = np.repeat(ones, 10, axis=0)
  fd_real, recall_real, coverage_real = scores(held_out)
  fd_noise, _, _ = scores(noise)
  fd_collapsed, recall_collapsed, coverage_collapsed = scores(collapsed)
  assert fd_real < 0.1 * fd_noise
  assert fd_real < fd_collapsed
  assert recall_collapsed < 0.5 * recall_real
  assert coverage_real["classes_covered"] >= 9
  assert coverage_collapsed["classes_covered"] <= 2


def test_reference_statistics_written_by_two_runs_at_once(tmp_path, monkeypatch):
  # Runs side by side on one cache compute the same reference at the same time
  # (a GPU shared by several trainings); neither may fail or leave a torn file.
  images = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 1), np.uint8)
  split = data.Split(images, np.zeros(64, np.int32))
  extractor = features.Extractor(name="fake", dataset="mnist", weights_sha256="ab" * 32,
                                 test_accuracy=None, apply=None, directory=tmp_path)
  both_extracting = threading.Barrier(2)

  def slow_extract(extractor, images_NHWC, return_logits=False):
    both_extracting.wait(timeout=10)   # both runs found no cached file
    flat = images_NHWC.reshape(len(images_NHWC), -1).astype(np.float32)
    return np.zeros(len(flat), np.int64), flat

  monkeypatch.setattr(features, "extract", slow_extract)
  results, errors = [], []

  def run():
    try:
      results.append(features.reference_statistics(extractor, split, "train", "mnist"))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  cached = list(tmp_path.iterdir())
  assert [f.name for f in cached] == [f"reference_mnist_train_64_{extractor.cache_key}.npz"]
  assert cached[0].stat().st_mode & 0o777 == 0o644
  with np.load(cached[0]) as f:
    np.testing.assert_array_equal(f["mean"], results[0]["mean"])
    np.testing.assert_array_equal(f["cov"], results[1]["cov"])


def test_eval_json_has_sample_metrics_and_is_reproducible(smoke_classifier,
                                                          trained_vae, mnist):
  del smoke_classifier
  config, workdir, state = trained_vae
  results = []
  for _ in range(2):
    s = train.setup(config, workdir, sharding.make_mesh(1), mnist)
    results.append(evaluate.run(s, state))
    results[-1].pop("wall_seconds")
    results[-1].pop("sample_metrics_seconds")
  assert json.dumps(results[0], sort_keys=True) == json.dumps(results[1], sort_keys=True)
  quality = results[0]["sample_metrics"]
  for name in ("fd_mnistnet_1k", "kid_mnistnet_1k", "precision_mnistnet_1k",
               "recall_mnistnet_1k", "coverage"):
    assert name in quality
  assert quality["fd_mnistnet_1k"] > 0
  protocol = results[0]["sample_protocol"]
  assert protocol["extractor"] == "mnistnet" and protocol["num_samples"] == 1000
  written = json.loads((workdir / "eval.json").read_text())
  assert written["sample_metrics"]["fd_mnistnet_1k"] == quality["fd_mnistnet_1k"]


def test_iwae_bound_is_the_elbo_at_k1_and_tightens(trained_vae, mnist):
  config, workdir, state = trained_vae
  config = config.copy_and_resolve_references()
  config.eval.num_samples = 0
  # The first 1,000 test images keep the k=50 pass quick.
  subset = with_first_test_images(mnist, 1000)
  means = {}
  for k in (1, 50):
    config.eval.iwae_samples = k
    s = train.setup(config, workdir, sharding.make_mesh(1), subset)
    result = evaluate.run(s, state)["metrics"]
    means[k] = result[f"iwae{k}_nats"]
    elbo = result["neg_elbo_nats"]
  # k=1: the same bound as the ELBO, estimated with the KL sampled rather than
  # in closed form: equal means up to Monte Carlo error.
  spread = 4 * np.hypot(means[1]["stderr"], elbo["stderr"])
  assert abs(means[1]["mean"] - elbo["mean"]) < spread
  assert means[50]["mean"] < means[1]["mean"] - 1.0
  assert means[50]["mean"] < elbo["mean"]


@pytest.mark.parametrize("config_module", ["dcgan_mnist", "ddpm_mnist", "classifier_mnist"])
def test_families_without_an_iwae_bound_refuse_eval_iwae_samples(config_module, mnist,
                                                                tmp_path):
  config = importlib.import_module(f"configs.{config_module}").get_config("smoke")
  config.eval.iwae_samples = 10
  with pytest.raises(configlib.ConfigError, match=r"eval\.iwae_samples.*must be 0"):
    train.setup(config, tmp_path, sharding.make_mesh(1), mnist)


def test_conditional_vae_reports_conditional_accuracy(smoke_classifier, mnist,
                                                      tmp_path):
  del smoke_classifier
  from configs import cvae_mnist  # pylint: disable=g-import-not-at-top
  config = cvae_mnist.get_config("smoke")
  config.train.progress_bar = False
  config.train.eval_at_end = False
  run = train.train(config, tmp_path, mesh=sharding.make_mesh(1), dataset=mnist)
  result = evaluate.run(run.setup, run.state)
  accuracy = result["sample_metrics"]["conditional_accuracy_mnistnet_1k"]
  assert 0.0 <= accuracy <= 1.0
  assert "one-hot label" in result["protocol"]["conditional"]
  assert result["protocol"]["compute_dtype"] == "float32"


def test_non_finite_samples_are_counted_and_left_out(smoke_classifier, trained_vae,
                                                    mnist):
  del smoke_classifier
  config, workdir, state = trained_vae
  s = train.setup(config, workdir, sharding.make_mesh(1), mnist)
  real_sample = s.family.sample

  def every_fourth_nan(state, key, num, labels=None):
    images = real_sample(state, key, num, labels)
    return images.at[::4].set(np.nan)

  s = dataclasses.replace(s, family=dataclasses.replace(s.family,
                                                        sample=every_fourth_nan))
  results, protocol = evaluate.sample_quality(s, state)
  assert results["non_finite_samples"] == 250
  assert protocol["num_samples"] == 750
  assert np.isfinite(results["fd_mnistnet_750"]) and results["fd_mnistnet_750"] > 0
