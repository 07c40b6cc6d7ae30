"""Convolutional VAE on dynamically binarized MNIST.

    python run.py --config=configs/vae_mnist.py            # ~10 min on 2 CPU cores
    python run.py --config=configs/vae_mnist.py:smoke      # seconds
    python run.py --config=configs/vae_mnist.py --config.model.beta=4   # beta-VAE

The README gives the test negative ELBO this reaches and how long it takes.
"""

from jaxgen import configlib
from jaxgen.models import vae


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/vae_mnist.py")
  config = configlib.base_config()
  config.data.name = "mnist"
  config.data.binarize = "dynamic"
  vae.add_model_config(config)

  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.final_lr_fraction = 0.05

  config.train.batch_size = 128
  config.train.num_steps = 6_000
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.snapshot_every = 500

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    vae.shrink_model_for_smoke(config)
  return config
