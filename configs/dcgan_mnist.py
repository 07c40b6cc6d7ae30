"""DCGAN on MNIST (non-saturating loss, batch norm, Adam 2e-4, b1 0.5).

    python run.py --config=configs/dcgan_mnist.py          # 15 min on 2 CPU cores
    python run.py --config=configs/dcgan_mnist.py:smoke    # seconds
    python run.py --config=configs/dcgan_mnist.py --config.model.loss=hinge \\
        --config.model.spectral_norm=True --config.model.disc_norm=none

Trains for `train.max_seconds` of wall time (15 minutes) or `train.num_steps`,
whichever comes first; the README gives the sample quality this reaches.
"""

from jaxgen import configlib
from jaxgen.models import gan


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/dcgan_mnist.py")
  config = configlib.base_config()
  config.data.name = "mnist"
  gan.add_model_config(config)
  config.model.latent_dim = 64

  config.train.batch_size = 64
  config.train.num_steps = 50_000
  config.train.max_seconds = 15 * 60
  config.train.log_every = 100
  config.train.checkpoint_every = 2_000
  config.train.snapshot_every = 500

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    gan.shrink_model_for_smoke(config)
    config.train.max_seconds = 0
  return config
