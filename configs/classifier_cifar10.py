"""CIFAR-10 classifier: jaxgen's feature extractor ("cifar10net") for sample
metrics of CIFAR-10 models.

    python run.py --config=configs/classifier_cifar10.py

Exports its weights to the classifier cache ($JAXGEN_CACHE_DIR, default
~/.cache/jaxgen) when it finishes. Its test accuracy (on the test images at
hand: the first 1,000 in ../shared/data) is in eval.json and the README.
The "bn_pool" network (conv, pool, batch norm, GELU per width; global max
pool): the first conv sees the full 32x32 image and batch norm lets AdamW
train it fast. Random translations by up to 4 pixels, left-right flips and
label smoothing 0.1 regularize it instead of dropout. It evaluates (and
extracts features) averaged over each image and its mirror.
"""

from jaxgen import configlib
from jaxgen.models import classifier


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/classifier_cifar10.py")
  config = configlib.base_config()
  config.data.name = "cifar10"
  classifier.add_model_config(config)
  config.model.arch = "bn_pool"
  config.model.widths = (64, 128, 256)
  config.model.hidden = 512
  config.model.dropout = 0.0
  config.model.max_shift = 4
  config.model.flip = True
  config.model.flip_average = True
  config.model.label_smoothing = 0.1

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.05
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 200

  config.train.batch_size = 256
  config.train.num_steps = 2_700       # ~14 epochs
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.train.snapshot_every = 100_000  # no samples to draw
  config.eval.batch_size = 500

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    classifier.shrink_model_for_smoke(config)
    config.eval.batch_size = 500
  return config
