"""CIFAR-10 classifier: jaxgen's feature extractor ("cifar10net") for sample
metrics of CIFAR-10 models.

    python run.py --config=configs/classifier_cifar10.py

Exports its weights to the classifier cache ($JAXGEN_CACHE_DIR, default
~/.cache/jaxgen) when it finishes. Its test accuracy (on the test images at
hand: the first 1,000 in ../shared/data) is in eval.json and the README.
Random translations by up to 4 pixels and left-right flips; no batch norm,
so it is the same small network family as mnistnet, sized up.
"""

from jaxgen import configlib
from jaxgen.models import classifier


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/classifier_cifar10.py")
  config = configlib.base_config()
  config.data.name = "cifar10"
  classifier.add_model_config(config)
  config.model.widths = (64, 128, 256)
  config.model.hidden = 512
  config.model.dropout = 0.3
  config.model.max_shift = 4
  config.model.flip = True

  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 200

  config.train.batch_size = 128
  config.train.num_steps = 4_000       # ~10 epochs
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.snapshot_every = 100_000  # no samples to draw
  config.eval.batch_size = 500

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    classifier.shrink_model_for_smoke(config)
    config.eval.batch_size = 500
  return config
