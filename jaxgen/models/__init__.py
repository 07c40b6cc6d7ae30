"""Model families and the contract they share.

Every family module exposes `make(config, spec) -> Family`. The functions of a
Family are pure and close over the (static) config, so train.py, evaluation and
reporting call them without knowing which family they hold:

    init(key, example_batch) -> state            # a flax.struct pytree with .step
    train_step(state, batch, key) -> (state, metrics)
    sample(state, key, num, labels=None) -> images   # NHWC float in [0, 1]
                                                     # (None: not generative)
    evaluate(state, batch, key) -> per-example metrics, each of shape [B]
    views(state, batch, key) -> {name: images}  # extra grids (optional):
                                 # NHWC, or [rows, cols, H, W, C] for a layout
    encode(state, batch) -> codes [B, L]  # latent-variable families (optional):
                                 # posterior means, for latent statistics

Batches are dicts of global arrays: 'image' (uint8 NHWC), 'label' (int32), and
for evaluation 'index' (position in the split) and 'mask' (False on padding).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
from ml_collections import ConfigDict

from jaxgen import configlib
from jaxgen.data import DatasetSpec

State = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# family name -> module under jaxgen.models
FAMILIES = {
    "ae": "jaxgen.models.vae",
    "vae": "jaxgen.models.vae",
    "classifier": "jaxgen.models.classifier",
    "gan": "jaxgen.models.gan",
    "flow": "jaxgen.models.flow",
    "diffusion": "jaxgen.models.diffusion",
}


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  init: Callable[[jax.Array, Batch], State]
  train_step: Callable[[State, Batch, jax.Array], tuple[State, Metrics]]
  # None for families that do not generate (the classifier).
  sample: Callable[..., jax.Array] | None
  evaluate: Callable[[State, Batch, jax.Array], Metrics]
  views: Callable[[State, Batch, jax.Array], dict[str, jax.Array]] | None = None
  # The metric the progress bar shows and the NaN guard watches.
  loss_key: str = "loss"
  # How evaluate's numbers are defined, recorded in eval.json.
  eval_protocol: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Called with (state, eval result or None) when training completes, for
  # families whose product is an artifact (the classifier's cached weights).
  export: Callable[[State, dict[str, Any] | None], None] | None = None
  # sample() honours `labels` (label-conditional generation).
  conditional: bool = False
  # Posterior means / codes of a batch, for latent-space statistics and the
  # scatter of the test set (None: no latent space).
  encode: Callable[[State, Batch], jax.Array] | None = None
  # Metrics that share a panel of curves.png, e.g. (("d_real", "d_fake"),).
  curve_groups: tuple[tuple[str, ...], ...] = ()
  # Other ways to sample, by name (diffusion: "ddpm_1000", "ddim_50", ...),
  # same signature as `sample`; eval.json times each of them and `sample`.
  samplers: dict[str, Callable[..., jax.Array]] = dataclasses.field(
      default_factory=dict)
  # Views whose columns are frames of an animation (e.g. a denoising
  # trajectory): snapshots also write them as a GIF.
  animated_views: tuple[str, ...] = ()


def make_family(config: ConfigDict, spec: DatasetSpec) -> Family:
  configlib.require_one_of(config, "model.family", sorted(FAMILIES))
  module = importlib.import_module(FAMILIES[config.model.family])
  return module.make(config, spec)


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
