"""Config building blocks shared by configs/*.py, and config validation.

A config file is `get_config(arg=None) -> ConfigDict`. The fields every run has
come from `base_config()`; a family adds `config.model`. The arg "smoke" shrinks
any config to a run of seconds on CPU: `--config=configs/vae_mnist.py:smoke`.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

ConfigDict = ml_collections.ConfigDict

SMOKE = "smoke"


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def parse_arg(arg: str | None, config_name: str, extra: Iterable[str] = ()
              ) -> set[str]:
  """Splits a config arg like "smoke" into a set of options, rejecting unknowns
  (a config may accept `extra` options besides "smoke")."""
  allowed = {SMOKE, *extra}
  options = set(filter(None, (arg or "").split(",")))
  unknown = options - allowed
  if unknown:
    uses = " or ".join(f"'{config_name}:{o}'" for o in sorted(allowed))
    raise ConfigError(
        f"unknown argument {','.join(sorted(unknown))!r} for {config_name}: "
        f"use '{config_name}' or {uses}.")
  return options


def base_config() -> ConfigDict:
  """Fields every run has. Families fill `model`; datasets set `data.name`."""
  c = ConfigDict()
  c.seed = 0

  c.data = ConfigDict()
  c.data.name = "mnist"
  # Folder holding <name>/ with the official files; None -> $JAXGEN_DATA_DIR.
  c.data.dir = config_dict.placeholder(str)
  c.data.source = "auto"           # auto | raw | tfds (see jaxgen/data.py)
  c.data.tfds_dir = config_dict.placeholder(str)
  # "dynamic": train pixels drawn as Bernoulli(intensity) each time they are
  # seen; the test set is binarized once with test_binarize_seed. "none": 8-bit.
  c.data.binarize = "none"
  c.data.test_binarize_seed = 0

  c.model = ConfigDict()
  c.model.family = ""

  c.optimizer = ConfigDict()
  c.optimizer.name = "adam"        # adam | adamw | sgd (b1 = momentum)
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"  # constant | cosine
  c.optimizer.warmup_steps = 0
  c.optimizer.final_lr_fraction = 0.0  # cosine decays to this fraction
  c.optimizer.grad_clip_norm = 0.0     # 0 disables clipping

  c.train = ConfigDict()
  c.train.batch_size = 128         # global, split over all devices
  c.train.num_steps = 10_000
  # Wall-clock budget in seconds over all sessions on a workdir (0: none):
  # training stops at num_steps or when the budget is spent, whichever is
  # first, with a checkpoint ("time to quality" comparisons).
  c.train.max_seconds = 0.0
  c.train.log_every = 100
  c.train.checkpoint_every = 1_000
  c.train.snapshot_every = 1_000   # sample grids for samples/ and progress.gif
  c.train.keep_checkpoints = 3
  c.train.async_checkpoints = True
  c.train.progress_bar = True
  c.train.eval_at_end = True       # write eval.json when training finishes
  # Train steps per dispatch: k > 1 runs k steps as one compiled program
  # (unrolled), for small models whose step time is mostly dispatch overhead.
  # Same batches, keys and results as k = 1.
  c.train.steps_per_dispatch = 1

  c.eval = ConfigDict()
  c.eval.batch_size = 1_000
  c.eval.seed = 0
  # Sample quality (Frechet distance, KID, precision/recall, class coverage)
  # from this many samples, in the features of jaxgen's classifier for the
  # dataset; 0 skips it.
  c.eval.num_samples = 10_000
  # Importance-weighted bound with k samples (families with a latent variable
  # model); 0 skips it. Costly: k decoder passes per test image.
  c.eval.iwae_samples = 0
  # FID / KID / Inception Score in the features of the FID InceptionV3
  # (pytorch-fid's port of the 2015-12-05 TF weights): "" uses the weights
  # file in the cache ($JAXGEN_CACHE_DIR/inception/) when it is there, a path
  # uses that file, "download" fetches it to the cache (online), "off" skips.
  c.eval.inception_weights = ""
  # Real images behind the Inception reference statistics: 0 = the whole
  # train split (the standard; hours on a CPU, minutes on a GPU).
  c.eval.inception_reference_size = 0
  # Sampling speed in eval.json: images/s of sample() (and of each of the
  # family's other samplers) on a batch of this many, after a warm-up call.
  # 0 skips it.
  c.eval.timing_samples = 64

  # Mode-collapse monitor, at every snapshot of a sampling family: this many
  # samples from a fixed seed, scored by jaxgen's classifier for the dataset
  # (when it is cached) -> monitor_classes_covered, monitor_kl_to_uniform,
  # monitor_recall, monitor_fd in metrics.jsonl and curves.png. 0 disables.
  c.train.monitor_samples = 1_000

  c.viz = ConfigDict()
  c.viz.num_samples = 64
  c.viz.seed = 0                   # the fixed noise behind every sample grid
  return c


def shrink_for_smoke(c: ConfigDict) -> None:
  """Makes a run take seconds on CPU; families shrink their nets themselves."""
  c.train.batch_size = 32
  c.train.num_steps = 20
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.snapshot_every = 10
  c.optimizer.warmup_steps = 0
  c.eval.batch_size = 1_000
  c.eval.num_samples = 1_000
  c.train.monitor_samples = 200
  c.eval.timing_samples = 0        # a compile per sampler: not in smoke runs
  c.viz.num_samples = 16
  c.train.steps_per_dispatch = 1   # one program to compile, not an unrolled k


def get(config: ConfigDict, path: str) -> Any:
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def require(config: ConfigDict, path: str, ok: bool, requirement: str) -> None:
  if not ok:
    raise ConfigError(f"--config.{path}={get(config, path)!r}: {requirement}")


def require_one_of(config: ConfigDict, path: str, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  require(config, path, get(config, path) in choices,
          f"must be one of {', '.join(map(repr, choices))}")


def require_positive(config: ConfigDict, *paths: str, allow_zero: bool = False
                     ) -> None:
  for path in paths:
    value = get(config, path)
    ok = value >= 0 if allow_zero else value > 0
    require(config, path, ok, "must be >= 0" if allow_zero else "must be > 0")


# Compute dtypes of a family's networks (`model.compute_dtype`): bfloat16 for
# GPU/TPU tensor units, with params, optimizer state, norm statistics and the
# loss kept in float32.
COMPUTE_DTYPES = ("float32", "bfloat16")


def validate_base(config: ConfigDict) -> None:
  """Checks the fields of base_config(); families check their own."""
  from jaxgen import data  # pylint: disable=g-import-not-at-top
  require_one_of(config, "data.name", sorted(data.SPECS))
  require_one_of(config, "data.source", ("auto", "raw", "tfds"))
  require_one_of(config, "data.binarize", ("none", "dynamic"))
  require_one_of(config, "optimizer.name", ("adam", "adamw", "sgd"))
  require_one_of(config, "optimizer.schedule", ("constant", "cosine"))
  require_positive(config, "optimizer.learning_rate", "train.batch_size",
                   "train.log_every", "train.checkpoint_every",
                   "train.snapshot_every", "train.keep_checkpoints",
                   "train.steps_per_dispatch", "eval.batch_size", "viz.num_samples")
  require_positive(config, "eval.num_samples", "eval.iwae_samples",
                   "eval.timing_samples",
                   "train.monitor_samples", allow_zero=True)
  require_positive(config, "train.num_steps", "optimizer.warmup_steps",
                   "optimizer.weight_decay", "optimizer.grad_clip_norm",
                   "train.max_seconds", allow_zero=True)
  require(config, "optimizer.final_lr_fraction",
          0.0 <= config.optimizer.final_lr_fraction <= 1.0, "must be in [0, 1]")


def refuse_iwae(config: ConfigDict, reason: str) -> None:
  """For families with no importance-weighted bound: eval.iwae_samples would
  otherwise be ignored in silence."""
  require(config, "eval.iwae_samples", not config.eval.get("iwae_samples", 0),
          f"must be 0: {reason}")


def require_widths(config: ConfigDict, *paths: str) -> None:
  """Each path holds a non-empty tuple of positive ints (layer widths)."""
  for path in paths:
    widths = get(config, path)
    require(config, path,
            isinstance(widths, (tuple, list)) and len(widths) > 0
            and all(isinstance(w, int) and w > 0 for w in widths),
            "must be a non-empty tuple of positive ints, e.g. '(32, 64)'")


def check_overrides(config: ConfigDict, overrides: Iterable[str]) -> None:
  """Finds the first `--config.a.b=v` whose key does not exist, and says so.

  ml_collections raises a bare AttributeError from deep in config_dict for a
  misspelt key; this names the flag, the key and the keys that do exist.
  """
  for flag in overrides:
    path = flag.split("=", 1)[0][len("--config."):]
    node, walked = config, []
    for part in path.split("."):
      if not isinstance(node, ConfigDict) or part not in node:
        keys = sorted(node.keys()) if isinstance(node, ConfigDict) else []
        where = ".".join(walked) or "the config"
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" Did you mean {'.'.join(walked + close)!r}?" if close else ""
        raise ConfigError(
            f"{flag.split('=', 1)[0]}: {where} has no key {part!r}.{hint} "
            f"Keys there: {', '.join(keys) if keys else '(none: not a group)'}.")
      node = node[part]
      walked.append(part)


def to_dict(config: ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def to_json(config: ConfigDict) -> str:
  return json.dumps(to_dict(config), indent=2, sort_keys=True)


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two config dicts."""
  keys = sorted(set(old) | set(new))
  changed = []
  for k in keys:
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      changed += diff(a, b, f"{prefix}{k}.")
    elif a != b:
      changed.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return changed
