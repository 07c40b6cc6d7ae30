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
from jaxgen.evaluate import features, inception, metrics
from jaxgen.train import Setup, abstract_like, init_state, make_checkpointer


class SamplesError(ValueError):
  """Images handed to --mode=score that cannot be scored; says why."""


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
  """Sample-quality metrics of `eval.num_samples` samples, per extractor.

  jaxgen's classifier for the dataset: Frechet distance, KID, precision/recall
  and class coverage (and conditional accuracy). The FID InceptionV3, where
  its weights are at hand: FID, KID and Inception Score. Both against the
  training split (60,000 MNIST / 50,000 CIFAR-10 images). Samples are drawn
  with keys fold_in(PRNGKey(eval.seed + 1), chunk), so the same checkpoint and
  seed give the same numbers. An extractor that is not available is listed
  under "skipped" with what to do.
  """
  num = s.config.eval.num_samples
  samples, asked = _draw(s, state, num, jax.random.PRNGKey(s.config.eval.seed + 1))
  finite_N = finite_per_sample(samples)
  non_finite = int(np.sum(~finite_N))
  if non_finite == len(samples):
    # Nothing to score; the likelihood metrics in eval.json still stand.
    reason = (f"all {num:,} samples hold NaN or inf: the sampler diverged (a "
              "flow's inverse overflowing in float32 shows as inverse_failed; "
              "otherwise check the loss curve and train longer or more stably)")
    logging.warning("sample-quality metrics skipped: %s", reason)
    return ({"non_finite_samples": non_finite, "skipped": {"all": reason}},
            {"num_samples": 0, "sample_seed": s.config.eval.seed + 1})
  if non_finite:
    logging.warning("%d of %d samples hold NaN or inf; scoring the other %d",
                    non_finite, num, num - non_finite)
    samples = samples[finite_N]
    asked = asked[finite_N] if asked is not None else None
  results, protocol = score_images(s, samples, asked)
  results["non_finite_samples"] = non_finite
  protocol["sample_seed"] = s.config.eval.seed + 1
  protocol["non_finite_samples"] = (
      "samples holding NaN or inf (a sampler that diverged on them), left out "
      "of every metric above, which score the other num_samples")
  return results, protocol


def finite_per_sample(samples: np.ndarray) -> np.ndarray:
  """[N] bool: whether every value of each sample is finite."""
  return np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)


def score_images(s: Setup, samples: np.ndarray, asked: np.ndarray | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The sample-quality metrics of any images (NHWC, uint8 or [0, 1] floats)
  against the dataset's training split: a family's samples, or another
  codebase's (--mode=score), scored the same way."""
  expected = tuple(s.dataset.spec.image_shape)
  if samples.ndim != 4 or tuple(samples.shape[1:]) != expected:
    raise SamplesError(f"samples of shape {samples.shape}: expected "
                     f"[N, {', '.join(map(str, expected))}] for "
                     f"{s.dataset.spec.name} (NHWC)")
  finite_N = finite_per_sample(samples)
  if not np.all(finite_N):
    bad = int(np.sum(~finite_N))
    raise SamplesError(f"{bad} of {len(samples)} samples hold NaN or inf: "
                       "leave them out (and report how many), or pass uint8 images")
  num = len(samples)
  results: dict[str, Any] = {}
  protocol: dict[str, Any] = {"num_samples": num}
  skipped = {}
  try:
    classifier = features.load_extractor(s.dataset.spec.name)
  except features.ExtractorMissingError as e:
    skipped[features.extractor_name(s.dataset.spec.name)] = str(e)
  else:
    found, about = _classifier_metrics(s, classifier, samples, asked)
    results.update(found)
    protocol.update(about)
  if s.config.eval.inception_weights != "off":
    try:
      net = features.load_inception_extractor(s.config.eval.inception_weights)
    except features.ExtractorMissingError as e:
      skipped["inception"] = str(e)
    else:
      found, protocol["inception"] = _inception_metrics(s, net, samples)
      results.update(found)
  for name, reason in skipped.items():
    logging.warning("sample-quality metrics of %s skipped: %s", name, reason)
  if skipped:
    results["skipped"] = skipped
  return results, protocol


def score_file(s: Setup, path: Path) -> dict[str, Any]:
  """--mode=score: the sample metrics of images['images'] in an .npz file,
  written to <file>_scores.json beside it."""
  try:
    with np.load(path) as found:
      images = found["images"]
  except (OSError, ValueError, KeyError) as e:
    raise SamplesError(f"--samples={path}: cannot read an 'images' array from it "
                     f"({type(e).__name__}: {e}); write one with "
                     "np.savez(path, images=uint8 NHWC array)") from e
  start = time.perf_counter()
  results, protocol = score_images(s, images)
  result = {"samples": str(path), "sample_metrics": results,
            "sample_protocol": protocol,
            "wall_seconds": round(time.perf_counter() - start, 2)}
  if jax.process_index() == 0:
    out = path.with_name(path.stem + "_scores.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    result["path"] = str(out)
  return result


def _frechet_and_kid(reference: dict[str, np.ndarray], fake: np.ndarray,
                     seed: int) -> tuple[float, dict[str, float]]:
  """Frechet distance to the reference statistics, and KID (subsets of up to
  1,000) against the reference's fixed feature subset, with its stderr."""
  fake_mean, fake_cov = metrics.feature_statistics(fake)
  fd = metrics.frechet_distance(fake_mean, fake_cov, reference["mean"],
                                reference["cov"])
  kid, kid_stderr = metrics.kernel_inception_distance(
      reference["subset"], fake,
      subset_size=min(1000, len(fake), len(reference["subset"])), seed=seed)
  return fd, {"mean": kid, "stderr": kid_stderr}


def classifier_scores(reference: dict[str, np.ndarray], predicted: np.ndarray,
                      fake: np.ndarray, num_classes: int, kid_seed: int | None = None
                      ) -> dict[str, Any]:
  """Scores of samples in a classifier's features (eval.json's and the
  training-time mode-collapse monitor's, so the two cannot drift apart):
  Frechet distance to the reference statistics, precision/recall against the
  first len(fake) images of the reference subset, class coverage of the
  predicted labels, and KID when kid_seed is given."""
  scores: dict[str, Any] = {}
  if kid_seed is not None:
    scores["fd"], scores["kid"] = _frechet_and_kid(reference, fake, kid_seed)
  else:
    fake_mean, fake_cov = metrics.feature_statistics(fake)
    scores["fd"] = metrics.frechet_distance(fake_mean, fake_cov, reference["mean"],
                                            reference["cov"])
  scores["precision"], scores["recall"] = metrics.precision_recall(
      reference["subset"][:len(fake)], fake)
  scores["coverage"] = metrics.class_coverage(predicted, num_classes)
  return scores


def _classifier_metrics(s: Setup, extractor: features.Extractor,
                        samples: np.ndarray, asked: np.ndarray | None
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
  num = len(samples)
  predicted, fake = features.extract(extractor, samples)
  reference = features.reference_statistics(extractor, s.dataset.train, "train",
                                            s.dataset.spec.name)
  suffix = f"{extractor.name}_{_count_name(num)}"
  scores = classifier_scores(reference, predicted, fake,
                             s.dataset.spec.num_classes, kid_seed=s.config.eval.seed)
  results = {f"{name}_{suffix}": scores[name]
             for name in ("fd", "kid", "precision", "recall")}
  results["coverage"] = scores["coverage"]
  if asked is not None:
    # The share of samples the classifier assigns to the class they were
    # generated for (labels 0..C-1 in turn).
    results[f"conditional_accuracy_{suffix}"] = float(np.mean(predicted == asked))
  protocol = {
      **extractor.protocol(),
      "reference": f"{s.dataset.spec.name} train split, all "
                   f"{int(reference['num_examples']):,} images (Frechet "
                   f"distance); a fixed random {len(reference['subset']):,} of "
                   "them for KID (100 subsets of 1,000) and precision/recall "
                   "(k=3, first num_samples of the subset)",
      "coverage": "classifier's predicted class of each sample; a class is "
                  "covered when it holds at least half its uniform share",
  }
  return results, protocol


def _inception_metrics(s: Setup, extractor: features.Extractor,
                       samples: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
  num = len(samples)
  logits, fake = features.extract(extractor, samples, return_logits=True)
  train = s.dataset.train
  size = s.config.eval.inception_reference_size
  if size and size < len(train):
    # A fixed subset (the first `size` images) for quick, non-standard runs.
    train = data.Split(train.images[:size], train.labels[:size])
  reference = features.reference_statistics(extractor, train, "train",
                                            s.dataset.spec.name)
  suffix = f"inception_{_count_name(num)}"
  fid, kid = _frechet_and_kid(reference, fake, s.config.eval.seed)
  score, score_std = inception.inception_score(logits, splits=min(10, num))
  results = {
      f"fid_{suffix}": fid,
      f"kid_{suffix}": kid,
      f"is_{suffix}": {"mean": score, "std_over_splits": score_std},
  }
  full = len(train) == len(s.dataset.train)
  protocol = {
      **extractor.protocol(),
      "reference": (f"{s.dataset.spec.name} train split, "
                    + (f"all {len(train):,} images (the standard FID reference)"
                       if full else f"its first {len(train):,} images only "
                       "(eval.inception_reference_size): NOT the standard "
                       "reference, not comparable with published FIDs")),
      "inception_score": f"exp(E KL(p(y|x) || p(y))) over the 1008-way softmax, "
                         f"mean and std over {min(10, num)} splits",
  }
  return results, protocol


def encode_split(s: Setup, state: Any, split: data.Split) -> np.ndarray:
  """The family's codes (VAE: posterior means) of every image, [N, L]."""
  encode = jax.jit(s.family.encode, out_shardings=sharding.replicated(s.mesh))
  codes = [np.asarray(encode(state, batch))[np.asarray(batch["mask"])]
           for batch in data.eval_batches(split, s.config.eval.batch_size, s.mesh)]
  return np.concatenate(codes)


# A latent unit is active when its code varies over the data with a variance
# above this (Burda et al. 2016): a collapsed unit carries no information about x.
ACTIVE_UNIT_THRESHOLD = 0.01


def active_units(codes_NL: np.ndarray,
                 threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
  return int(np.sum(np.var(codes_NL.astype(np.float64), axis=0) > threshold))


def latent_statistics(s: Setup, state: Any, split: data.Split) -> dict[str, Any]:
  """Active units of the test codes and latent_scatter.png: the test codes
  coloured by label, directly for a 2-D latent, else their first two
  principal components."""
  codes_NL = encode_split(s, state, split)
  latent_dim = codes_NL.shape[1]
  variance_L = np.var(codes_NL.astype(np.float64), axis=0)
  if latent_dim == 2:
    points, axes, how = codes_NL, ("z0", "z1"), "the 2-D latent means"
  else:
    centred = codes_NL - codes_NL.mean(0)
    _, singular, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    points = centred @ vt[:2].T
    explained = singular[:2] ** 2 / max(np.sum(singular ** 2), 1e-30)
    axes = (f"PC1 ({explained[0]:.0%} of variance)",
            f"PC2 ({explained[1]:.0%} of variance)")
    how = f"the first two principal components of the {latent_dim}-D latent means"
  path = s.workdir / "latent_scatter.png"
  if jax.process_index() == 0:
    s.workdir.mkdir(parents=True, exist_ok=True)
    viz.plot_latent_scatter(
        points, split.labels, s.dataset.spec.class_names, path,
        title=f"{s.dataset.spec.name} test set ({len(split):,}): {how}",
        axis_labels=axes)
  return {
      "latent_dim": latent_dim,
      "active_units": active_units(codes_NL),
      "active_units_definition": (
          "units whose posterior mean (AE: code) has variance > "
          f"{ACTIVE_UNIT_THRESHOLD} over the test set; few = posterior collapse"),
      "code_variance_quantiles": {q: float(np.quantile(variance_L, float(q)))
                                  for q in ("0.0", "0.5", "1.0")},
      "scatter": path.name,
  }


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
  if "compute_dtype" in s.config.model:
    # bfloat16 networks score differently from float32 ones on the same params.
    result["protocol"]["compute_dtype"] = s.config.model.compute_dtype
  if s.family.encode is not None:
    result["latent"] = latent_statistics(s, state, split)
  if s.family.sample is not None and s.config.eval.num_samples:
    sample_start = time.perf_counter()
    result["sample_metrics"], result["sample_protocol"] = sample_quality(s, state)
    result["sample_metrics_seconds"] = round(time.perf_counter() - sample_start, 2)
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
  if s.family.sample is not None and s.config.eval.timing_samples:
    result["sampling_speed"] = sampling_speed(s, state)
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
  if jax.process_index() == 0:
    s.workdir.mkdir(parents=True, exist_ok=True)
    (s.workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
  logging.info("eval at step %d: %s", result["step"],
               ", ".join(f"{k}={v['mean']:.3f}" for k, v in metrics.items()))
  return result


def sampling_speed(s: Setup, state: Any) -> dict[str, Any]:
  """Seconds per image and images/s of `sample` and of each of the family's
  other samplers, on one jitted batch of eval.timing_samples images, timed on
  a second call (the first compiles)."""
  num = s.config.eval.timing_samples
  key = jax.random.PRNGKey(s.config.eval.seed + 3)
  labels = (np.arange(num) % s.dataset.spec.num_classes
            if s.family.conditional else None)
  found = {}
  for name, sampler in {"sample": s.family.sample, **s.family.samplers}.items():
    draw = jax.jit(lambda state, k, sampler=sampler: sampler(state, k, num, labels),
                   out_shardings=sharding.replicated(s.mesh))
    jax.block_until_ready(draw(state, key))
    begin = time.perf_counter()
    jax.block_until_ready(draw(state, jax.random.fold_in(key, 1)))
    seconds = time.perf_counter() - begin
    found[name] = {"seconds_per_image": seconds / num,
                   "images_per_second": num / seconds, "batch": num}
  found["device"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  return found


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
