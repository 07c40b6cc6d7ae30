"""DCGAN on CIFAR-10 (non-saturating loss, batch norm, Adam 2e-4, b1 0.5).

    python run.py --config=configs/dcgan_cifar10.py
    python run.py --config=configs/dcgan_cifar10.py:smoke

The baseline that configs/acgan_cifar10.py, configs/cgan_cifar10.py and
configs/sngan_cifar10.py are compared with at the same step budget (README,
"The GAN family").
"""

from jaxgen import configlib
from jaxgen.models import gan


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/dcgan_cifar10.py")
  config = configlib.base_config()
  config.data.name = "cifar10"
  gan.add_model_config(config)
  config.model.latent_dim = 128
  config.model.gen_widths = (256, 128, 64)   # 4x4 -> 8 -> 16 -> 32
  config.model.disc_widths = (64, 128, 256)  # 32 -> 16 -> 8 -> 4

  config.train.batch_size = 64
  config.train.num_steps = 20_000
  config.train.log_every = 100
  config.train.checkpoint_every = 2_000
  config.train.snapshot_every = 1_000

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    gan.shrink_model_for_smoke(config)
  return config
