"""Feature extractors for sample-quality metrics, and their cached reference stats.

jaxgen's own classifiers ("mnistnet", "cifar10net": configs/classifier_*.py)
are trained once and exported to the classifier cache:

    $JAXGEN_CACHE_DIR/classifiers/<dataset>/   (default ~/.cache/jaxgen)
        params.msgpack    flax-serialized parameters
        info.json         network config, test accuracy, sha256 of the weights
        reference_<split>_<sha12>.npz   feature statistics of the real split

Metrics name their extractor (e.g. fd_mnistnet_10k), and eval.json records the
weights' sha256, so numbers from different classifiers are never mixed up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxgen import data
from jaxgen.evaluate import metrics
from jaxgen.nets.classifier import ConvClassifier

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

  def protocol(self) -> dict[str, Any]:
    return {"extractor": self.name,
            "extractor_kind": "jaxgen classifier, penultimate layer (ReLU)",
            "extractor_weights_sha256": self.weights_sha256,
            "extractor_test_accuracy": self.test_accuracy,
            "extractor_path": str(self.directory)}


def export_classifier(config: ConfigDict, params: Any,
                      eval_result: dict[str, Any] | None) -> Path:
  """Writes a trained classifier to the cache (process 0 only)."""
  directory = classifier_dir(config.data.name)
  blob = flax.serialization.to_bytes(params)
  accuracy = None
  if eval_result is not None:
    accuracy = eval_result["metrics"]["accuracy"]["mean"]
  info = {
      "name": extractor_name(config.data.name),
      "dataset": config.data.name,
      "model": {"widths": list(config.model.widths), "hidden": config.model.hidden,
                "dropout": config.model.dropout},
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
  net = ConvClassifier(widths=tuple(info["model"]["widths"]),
                       hidden=info["model"]["hidden"], num_classes=spec.num_classes,
                       dropout=info["model"]["dropout"])
  template = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *spec.image_shape)))
  params = flax.serialization.from_bytes(template, blob)
  apply = jax.jit(lambda x: net.apply(params, x))
  return Extractor(info["name"], dataset, digest, info["test_accuracy"], apply,
                   directory)


def extract(extractor: Extractor, images_NHWC: np.ndarray, batch_size: int = 1000
            ) -> tuple[np.ndarray, np.ndarray]:
  """(predicted labels [N], features [N, D]) of images in [0, 1] or uint8."""
  labels, features = [], []
  for start in range(0, len(images_NHWC), batch_size):
    chunk = np.asarray(images_NHWC[start:start + batch_size])
    if chunk.dtype == np.uint8:
      chunk = chunk.astype(np.float32) / 255.0
    logits, feats = extractor.apply(jnp.asarray(chunk, jnp.float32))
    labels.append(np.asarray(jnp.argmax(logits, -1)))
    features.append(np.asarray(feats, np.float32))
  return np.concatenate(labels), np.concatenate(features)


def reference_statistics(extractor: Extractor, split: data.Split, split_name: str
                         ) -> dict[str, np.ndarray]:
  """Mean, covariance and a fixed 10k subset of the real split's features, cached."""
  path = extractor.directory / (
      f"reference_{split_name}_{len(split)}_{extractor.weights_sha256[:12]}.npz")
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
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **stats)
    tmp.rename(path)
  return stats
