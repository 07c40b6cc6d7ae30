"""MNIST classifier: jaxgen's feature extractor ("mnistnet") for sample metrics.

    python run.py --config=configs/classifier_mnist.py

Exports its weights to the classifier cache ($JAXGEN_CACHE_DIR, default
~/.cache/jaxgen) when it finishes; the README gives its test accuracy.
"""

from jaxgen import configlib
from jaxgen.models import classifier


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/classifier_mnist.py")
  config = configlib.base_config()
  config.data.name = "mnist"
  classifier.add_model_config(config)
  config.model.widths = (32, 64)
  config.model.max_shift = 2

  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100

  config.train.batch_size = 128
  config.train.num_steps = 2_400       # ~5 epochs
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.snapshot_every = 100_000  # no samples to draw
  config.eval.batch_size = 1_000

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    classifier.shrink_model_for_smoke(config)
  return config
