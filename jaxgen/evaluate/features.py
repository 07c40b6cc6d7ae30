"""Feature extractors for sample-quality metrics, and their cached reference stats.

jaxgen's own classifiers ("mnistnet", "cifar10net": configs/classifier_*.py)
are trained once and exported to the classifier cache:

    $JAXGEN_CACHE_DIR/classifiers/<dataset>/   (default ~/.cache/jaxgen)
        params.msgpack    flax-serialized parameters
        info.json         network config, test accuracy, sha256 of the weights
        reference_<split>_<key12>.npz   feature statistics of the real split
                                        (key: weights sha256 + network info)

Metrics name their extractor (e.g. fd_mnistnet_10k), and eval.json records the
weights' sha256, so numbers from different classifiers are never mixed up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
import tempfile
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxgen import data
from jaxgen.evaluate import inception, metrics
from jaxgen.nets.classifier import make_classifier_net, network_info

CACHE_ENV = "JAXGEN_CACHE_DIR"
REFERENCE_SUBSET = 10_000  # real features kept for KID and precision/recall


class ExtractorMissingError(FileNotFoundError):
  """No trained classifier in the cache; the message says how to make one."""


def cache_dir() -> Path:
  return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxgen")


def classifier_dir(dataset: str) -> Path:
  return cache_dir() / "classifiers" / dataset


def extractor_name(dataset: str) -> str:
  return f"{dataset}net"


@dataclasses.dataclass(frozen=True)
class Extractor:
  name: str
  dataset: str
  weights_sha256: str
  test_accuracy: float | None
  # images NHWC float in [0, 1] -> (logits [B, classes], features [B, D])
  apply: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
  directory: Path

  kind: str = "jaxgen classifier, penultimate layer (ReLU)"
  batch_size: int = 1000   # images per forward pass (Inception: memory-bound)
  # How the weights are applied (a classifier's info.json "model"): the same
  # weights with and without flip averaging are different extractors.
  network: dict[str, Any] | None = None

  @property
  def cache_key(self) -> str:
    """12 hex digits naming weights + network, for cached reference statistics."""
    if self.network is None:
      return self.weights_sha256[:12]
    identity = self.weights_sha256 + json.dumps(self.network, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:12]

  def protocol(self) -> dict[str, Any]:
    protocol = {"extractor": self.name,
                "extractor_kind": self.kind,
                "extractor_weights_sha256": self.weights_sha256,
                "extractor_test_accuracy": self.test_accuracy,
                "extractor_path": str(self.directory)}
    if self.network is not None:
      protocol["extractor_network"] = self.network
    return protocol


def export_classifier(config: ConfigDict, variables: Any,
                      eval_result: dict[str, Any] | None) -> Path:
  """Writes a trained classifier (its Flax variables: params, and batch norm
  statistics where it has them) to the cache (process 0 only)."""
  directory = classifier_dir(config.data.name)
  blob = flax.serialization.to_bytes(variables)
  accuracy = None
  if eval_result is not None:
    accuracy = eval_result["metrics"]["accuracy"]["mean"]
  info = {
      "name": extractor_name(config.data.name),
      "dataset": config.data.name,
      "model": network_info(config.model),
      "test_accuracy": accuracy,
      "test_examples": None if eval_result is None else eval_result["num_examples"],
      "weights_sha256": hashlib.sha256(blob).hexdigest(),
  }
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.msgpack").write_bytes(blob)
    (directory / "info.json").write_text(json.dumps(info, indent=2) + "\n")
  return directory


def load_extractor(dataset: str) -> Extractor:
  directory = classifier_dir(dataset)
  info_path, params_path = directory / "info.json", directory / "params.msgpack"
  if not (info_path.exists() and params_path.exists()):
    raise ExtractorMissingError(
        f"no trained {dataset} classifier in {directory}: sample-quality "
        f"metrics need one. Train it once with\n  python run.py "
        f"--config=configs/classifier_{dataset}.py\n(or point {CACHE_ENV} at "
        "a cache that has it).")
  info = json.loads(info_path.read_text())
  blob = params_path.read_bytes()
  digest = hashlib.sha256(blob).hexdigest()
  if digest != info["weights_sha256"]:
    raise ExtractorMissingError(
        f"{params_path} does not match the sha256 in {info_path} (corrupt or "
        f"replaced); retrain with python run.py --config=configs/classifier_{dataset}.py")
  spec = data.SPECS[dataset]
  net = make_classifier_net(info["model"], spec.num_classes)
  template = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *spec.image_shape)))
  variables = flax.serialization.from_bytes(template, blob)
  apply = jax.jit(lambda x: net.apply(variables, x))
  return Extractor(info["name"], dataset, digest, info["test_accuracy"], apply,
                   directory, network=info["model"])


def inception_dir() -> Path:
  return cache_dir() / "inception"


def load_inception_extractor(weights: str) -> Extractor:
  """The FID InceptionV3 as an Extractor (features: pool3, 2048-d).

  `weights`: "" = the official file in the cache if present; a path; or
  "download" to fetch the official file into the cache (needs internet).
  """
  cached = inception_dir() / inception.WEIGHTS_FILE_NAME
  if weights == "download":
    if not cached.exists():
      _download(inception.WEIGHTS_URL, cached)
    path = cached
  elif weights:
    path = Path(weights).expanduser()
    if not path.exists():
      raise ExtractorMissingError(
          f"eval.inception_weights={weights!r}: no such file. Give the path of "
          f"{inception.WEIGHTS_FILE_NAME} ({inception.WEIGHTS_URL}), or "
          "'download' to fetch it, or 'off'.")
  elif cached.exists():
    path = cached
  else:
    raise ExtractorMissingError(
        f"no InceptionV3 FID weights in {cached.parent}: FID and Inception "
        f"Score need {inception.WEIGHTS_FILE_NAME}. Run once with "
        "--config.eval.inception_weights=download (online), or download "
        f"{inception.WEIGHTS_URL} yourself and pass "
        "--config.eval.inception_weights=PATH (or put it in that folder).")
  apply, info = inception.load_inception(path)

  def logits_and_features(images_NHWC):
    pool3, logits = apply(images_NHWC)
    return logits, pool3

  kind = ("FID InceptionV3 (pytorch-fid's port of the TF 2015-12-05 weights), "
          "pool3 2048-d; images resized bilinearly to 299x299, grey repeated "
          "to RGB")
  if info["matches_official_hash_prefix"] is not True:
    kind += ("; NOT the official weights file (name or hash differ): numbers "
             "are not comparable with published FIDs")
  return Extractor("inception", "any", info["weights_sha256"], None,
                   logits_and_features, path.parent, kind=kind, batch_size=50)


def _download(url: str, path: Path) -> None:
  import urllib.request  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".part")
  try:
    urllib.request.urlretrieve(url, tmp)
  except OSError as e:
    raise ExtractorMissingError(
        f"could not download {url} ({e}); download it yourself and pass "
        "--config.eval.inception_weights=PATH") from e
  tmp.rename(path)


def extract(extractor: Extractor, images_NHWC: np.ndarray,
            return_logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(predicted labels [N], or logits [N, classes] with `return_logits`;
  features [N, D]) of images in [0, 1] or uint8."""
  batch_size = extractor.batch_size
  labels, features = [], []
  for start in range(0, len(images_NHWC), batch_size):
    chunk = np.asarray(images_NHWC[start:start + batch_size])
    if chunk.dtype == np.uint8:
      chunk = chunk.astype(np.float32) / 255.0
    logits, feats = extractor.apply(jnp.asarray(chunk, jnp.float32))
    labels.append(np.asarray(logits if return_logits else jnp.argmax(logits, -1)))
    features.append(np.asarray(feats, np.float32))
  return np.concatenate(labels), np.concatenate(features)


def reference_statistics(extractor: Extractor, split: data.Split, split_name: str,
                         dataset: str) -> dict[str, np.ndarray]:
  """Mean, covariance and a fixed 10k subset of the real split's features, cached."""
  path = extractor.directory / (f"reference_{dataset}_{split_name}_{len(split)}_"
                                f"{extractor.cache_key}.npz")
  if path.exists():
    with np.load(path) as cached:
      return dict(cached)
  _, features = extract(extractor, split.images)
  mean, cov = metrics.feature_statistics(features)
  rng = np.random.default_rng(0)
  subset = features[rng.choice(len(features), min(REFERENCE_SUBSET, len(features)),
                               replace=False)]
  stats = {"mean": mean, "cov": cov, "subset": subset,
           "num_examples": np.array(len(split))}
  if jax.process_index() == 0:
    # Runs side by side on one cache may compute the same statistics at once:
    # each writes its own file, and the atomic rename lets the last one win.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".",
                               suffix=".tmp.npz")
    os.close(fd)
    np.savez(tmp, **stats)
    os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide a shared cache
    os.replace(tmp, path)
  return stats
