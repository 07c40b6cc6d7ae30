"""Image classifier: jaxgen's own feature extractor for sample-quality metrics.

Trained through the same loop as the generative families
(`python run.py --config=configs/classifier_mnist.py`). When training
finishes, its parameters and test accuracy are exported to the classifier
cache (jaxgen/evaluate/features.py), where evaluation of any generative model
finds them offline.

Objective: softmax cross-entropy in nats, with label smoothing 0 by default.
Training images are randomly translated by up to `model.max_shift` pixels
(zero padding) and, when `model.flip` is set, mirrored left-right.
With `model.arch = "bn_pool"` the network has batch norm: its running
statistics are part of the state (`batch_stats`), updated by each train step
and exported with the weights.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from jaxgen import configlib, data, optim
from jaxgen.data import DatasetSpec
from jaxgen.models import Batch, Family, Metrics
from jaxgen.nets import classifier as classifier_nets


@flax.struct.dataclass
class ClassifierState:
  step: jax.Array
  params: Any         # {"params": ...}, what the optimizer updates
  opt_state: Any
  batch_stats: Any    # {"batch_stats": ...} for batch norm, else {}


def add_model_config(config: ConfigDict) -> None:
  m = config.model
  m.family = "classifier"
  m.arch = "plain"          # | "bn_pool" (jaxgen/nets/classifier.py)
  m.widths = (32, 64)
  m.hidden = 256
  m.dropout = 0.3
  m.max_shift = 2
  m.flip = False              # training augmentation
  m.flip_average = False      # evaluation: average over the image and its mirror
  m.label_smoothing = 0.0


def shrink_model_for_smoke(config: ConfigDict) -> None:
  config.model.widths = (8, 16)
  config.model.hidden = 32


def validate(config: ConfigDict) -> None:
  configlib.require_one_of(config, "model.arch", classifier_nets.ARCHS)
  configlib.require_positive(config, "model.hidden")
  configlib.require_positive(config, "model.max_shift", allow_zero=True)
  configlib.require(config, "model.dropout", 0.0 <= config.model.dropout < 1.0,
                    "must be in [0, 1)")
  configlib.require(config, "model.label_smoothing",
                    0.0 <= config.model.label_smoothing < 1.0, "must be in [0, 1)")
  configlib.refuse_iwae(config, "the classifier is not a generative model")


def make_network(config: ConfigDict, spec: DatasetSpec) -> nn.Module:
  return classifier_nets.make_classifier_net(
      classifier_nets.network_info(config.model), spec.num_classes)


def make(config: ConfigDict, spec: DatasetSpec) -> Family:
  validate(config)
  m = config.model
  net = make_network(config, spec)
  optimizer = optim.make_optimizer(config.optimizer, config.train.num_steps)
  smoothing = float(m.label_smoothing)

  def init(key: jax.Array, example_batch: Batch) -> ClassifierState:
    del example_batch
    variables = net.init(key, jnp.zeros((1, *spec.image_shape), jnp.float32))
    params = {"params": variables["params"]}
    batch_stats = {k: v for k, v in variables.items() if k == "batch_stats"}
    return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), batch_stats=batch_stats)

  def train_step(state: ClassifierState, batch: Batch, key: jax.Array
                 ) -> tuple[ClassifierState, Metrics]:
    augment_key, dropout_key = jax.random.split(key)
    x = data.augment(augment_key, batch["image"].astype(jnp.float32) / 255.0,
                m.max_shift, m.flip)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], spec.num_classes),
                                  smoothing)

    def loss_fn(params):
      (logits, _), updated = net.apply(
          {**params, **state.batch_stats}, x, train=True,
          rngs={"dropout": dropout_key}, mutable=list(state.batch_stats))
      loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
      accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
      return loss, {"train_accuracy": accuracy, "batch_stats": updated}

    # The batch statistics of this forward pass ride out in loss_fn's aux
    # metrics (the one gradient step passes them through untouched).
    state, metrics = optim.gradient_step(state, optimizer, loss_fn)
    return state.replace(batch_stats=metrics.pop("batch_stats")), metrics

  def variables(state: ClassifierState) -> dict[str, Any]:
    return {**state.params, **state.batch_stats}

  def evaluate(state: ClassifierState, batch: Batch, key: jax.Array) -> Metrics:
    del key
    logits, _ = net.apply(variables(state), batch["image"].astype(jnp.float32) / 255.0)
    return {"accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            "xent_nats": optax.softmax_cross_entropy_with_integer_labels(
                logits, batch["label"])}

  protocol = {"metric": "top-1 accuracy and cross-entropy (nats) on the test "
                        "split, 8-bit images scaled to [0, 1], no augmentation"}
  def export(state: ClassifierState, eval_result) -> None:
    from jaxgen.evaluate import features  # pylint: disable=g-import-not-at-top
    features.export_classifier(config, variables(state), eval_result)

  return Family(name="classifier", init=init, train_step=train_step, sample=None,
                evaluate=evaluate, views=None, loss_key="loss",
                eval_protocol=protocol, export=export)
