"""Test-set evaluation: exact means over the full split, written to eval.json.

The split is cut into padded batches; padding is masked out of the sums, so the
mean is over exactly the N test images whatever the batch size or device count.
Each image's randomness (e.g. the VAE's posterior sample) comes from
fold_in(eval_key, image index), so the numbers do not depend on batching either.

Protocol for binarized MNIST ("data.binarize = dynamic"): the test set is
binarized ONCE, pixel ~ Bernoulli(intensity/255), with key
fold_in(PRNGKey(data.test_binarize_seed), image index); the same binary test set
for every model and run. The family adds what its metric means (eval_protocol).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data, sharding, viz
from jaxgen.checkpoint import CheckpointError
from jaxgen.evaluate import features, metrics
from jaxgen.train import Setup, abstract_like, init_state, make_checkpointer


def eval_split(s: Setup) -> data.Split:
  """The test split as the evaluation protocol defines it."""
  test = s.dataset.test
  if s.config.data.binarize == "dynamic":
    return data.Split(data.binarize_once(test.images, s.config.data.test_binarize_seed),
                      test.labels)
  return test


def evaluate_state(s: Setup, state: Any, split: data.Split) -> dict[str, Any]:
  """Means and standard errors of every per-example metric over the split."""
  replicated = sharding.replicated(s.mesh)
  key = jax.random.PRNGKey(s.config.eval.seed)

  def batch_sums(state, batch):
    per_example = s.family.evaluate(state, batch, key)
    mask = batch["mask"].astype(jnp.float32)
    # Sums in float32 per batch, accumulated in float64 on the host.
    return {k: (jnp.sum(v * mask), jnp.sum(jnp.square(v) * mask))
            for k, v in per_example.items()}

  batch_sums = jax.jit(batch_sums, out_shardings=replicated)
  totals: dict[str, list[float]] = {}
  for batch in data.eval_batches(split, s.config.eval.batch_size, s.mesh):
    for name, (total, total_sq) in jax.device_get(batch_sums(state, batch)).items():
      acc = totals.setdefault(name, [0.0, 0.0])
      acc[0] += float(total)
      acc[1] += float(total_sq)
  n = len(split)
  metrics = {}
  for name, (total, total_sq) in totals.items():
    mean = total / n
    variance = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    metrics[name] = {"mean": mean, "stderr": math.sqrt(variance / n)}
  return metrics


def _count_name(n: int) -> str:
  return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def draw_samples(s: Setup, state: Any, num: int, key: jax.Array) -> np.ndarray:
  """`num` samples as a host array, in chunks of eval.batch_size drawn with
  fold_in(key, chunk index)."""
  return _draw(s, state, num, key)[0]


def _draw(s: Setup, state: Any, num: int, key: jax.Array
          ) -> tuple[np.ndarray, np.ndarray | None]:
  """Samples and, for conditional families, the labels asked for (i mod C)."""
  chunk = min(num, s.config.eval.batch_size)
  classes = s.dataset.spec.num_classes
  conditional = s.family.conditional

  def sample_chunk(state, k, labels):
    return s.family.sample(state, k, chunk, labels if conditional else None)

  draw = jax.jit(sample_chunk, out_shardings=sharding.replicated(s.mesh))
  images, labels = [], []
  for i in range(-(-num // chunk)):
    asked = (i * chunk + np.arange(chunk)) % classes
    images.append(np.asarray(draw(state, jax.random.fold_in(key, i), asked)))
    labels.append(asked)
  asked_labels = np.concatenate(labels)[:num] if conditional else None
  return np.concatenate(images)[:num], asked_labels


def sample_quality(s: Setup, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """Frechet distance, KID, precision/recall and class coverage of samples.

  Against the full training split (60,000 MNIST / 50,000 CIFAR-10 images) in
  the features of jaxgen's classifier for the dataset. Samples are drawn with
  keys fold_in(PRNGKey(eval.seed + 1), chunk), so the same checkpoint and seed
  give the same numbers.
  """
  num = s.config.eval.num_samples
  extractor = features.load_extractor(s.dataset.spec.name)
  samples, asked = _draw(s, state, num, jax.random.PRNGKey(s.config.eval.seed + 1))
  predicted, fake = features.extract(extractor, samples)
  reference = features.reference_statistics(extractor, s.dataset.train, "train")
  fake_mean, fake_cov = metrics.feature_statistics(fake)
  suffix = f"{extractor.name}_{_count_name(num)}"
  kid, kid_stderr = metrics.kernel_inception_distance(
      reference["subset"], fake, subset_size=min(1000, num), seed=s.config.eval.seed)
  precision, recall = metrics.precision_recall(reference["subset"][:num], fake)
  coverage = metrics.class_coverage(predicted, s.dataset.spec.num_classes)
  results = {
      f"fd_{suffix}": metrics.frechet_distance(fake_mean, fake_cov,
                                               reference["mean"], reference["cov"]),
      f"kid_{suffix}": {"mean": kid, "stderr": kid_stderr},
      f"precision_{suffix}": precision,
      f"recall_{suffix}": recall,
      "coverage": coverage,
  }
  if asked is not None:
    # The share of samples the classifier assigns to the class they were
    # generated for (labels 0..C-1 in turn).
    results[f"conditional_accuracy_{suffix}"] = float(np.mean(predicted == asked))
  protocol = {
      **extractor.protocol(),
      "num_samples": num,
      "reference": f"{s.dataset.spec.name} train split, all "
                   f"{int(reference['num_examples']):,} images (Frechet "
                   f"distance); a fixed random {len(reference['subset']):,} of "
                   "them for KID (100 subsets of 1,000) and precision/recall "
                   "(k=3, first num_samples of the subset)",
      "sample_seed": s.config.eval.seed + 1,
      "coverage": "classifier's predicted class of each sample; a class is "
                  "covered when it holds at least half its uniform share",
  }
  return results, protocol


def run(s: Setup, state: Any | None = None) -> dict[str, Any]:
  """Evaluates `state` (default: the latest checkpoint) and writes eval.json."""
  start = time.perf_counter()
  if state is None:
    state = _restore_for_eval(s)
  split = eval_split(s)
  metrics = evaluate_state(s, state, split)
  result = {
      "step": int(state.step),
      "split": "test",
      "num_examples": len(split),
      "metrics": metrics,
      "protocol": {
          **s.family.eval_protocol,
          "dataset": s.dataset.spec.name,
          "source": s.dataset.source,
          "test_split_note": s.dataset.test_note or "full test split",
          "means": "exact over all test examples (padded batches masked)",
          "eval_seed": s.config.eval.seed,
      },
      "wall_seconds": round(time.perf_counter() - start, 2),
  }
  if s.family.sample is not None and s.config.eval.num_samples:
    sample_start = time.perf_counter()
    try:
      result["sample_metrics"], result["sample_protocol"] = sample_quality(s, state)
    except features.ExtractorMissingError as e:
      logging.warning("sample-quality metrics skipped: %s", e)
      result["sample_metrics"] = {"skipped": str(e)}
    result["sample_metrics_seconds"] = round(time.perf_counter() - sample_start, 2)
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
  if jax.process_index() == 0:
    s.workdir.mkdir(parents=True, exist_ok=True)
    (s.workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
  logging.info("eval at step %d: %s", result["step"],
               ", ".join(f"{k}={v['mean']:.3f}" for k, v in metrics.items()))
  return result


def write_samples(s: Setup, num: int, state: Any | None = None) -> Path:
  """--mode=sample: `num` samples of the latest checkpoint -> samples.npz + PNG.

  samples.npz holds 'images' (uint8 NHWC) and the step; keys come from
  PRNGKey(eval.seed + 2), so the same checkpoint and seed give the same images.
  """
  if s.family.sample is None:
    raise ValueError(f"the {s.family.name} family does not generate samples")
  if state is None:
    state = _restore_for_eval(s)
  images = draw_samples(s, state, num, jax.random.PRNGKey(s.config.eval.seed + 2))
  images_u8 = viz.to_uint8(images)
  path = s.workdir / f"samples_{num}.npz"
  if jax.process_index() == 0:
    np.savez_compressed(path, images=images_u8, step=int(state.step))
    viz.save_png(viz.grid(images_u8[:min(num, 256)]),
                 s.workdir / f"samples_{num}.png", scale=2)
  return path


def _restore_for_eval(s: Setup) -> Any:
  batch = {"image": np.zeros((s.mesh.devices.size, *s.dataset.spec.image_shape), np.uint8),
           "label": np.zeros((s.mesh.devices.size,), np.int32)}
  template = init_state(s, sharding.put_batch(batch, s.mesh))
  checkpointer = make_checkpointer(s)
  try:
    state, step = checkpointer.restore_latest(abstract_like(template))
  finally:
    checkpointer.close()
  if state is None:
    raise CheckpointError(
        f"no checkpoint in {Path(s.workdir) / 'checkpoints'} to evaluate: train "
        "first with --mode=train on this --workdir.")
  logging.info("evaluating the checkpoint at step %d", step)
  return state
