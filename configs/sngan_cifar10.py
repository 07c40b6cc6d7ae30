"""The strong GAN default on CIFAR-10: hinge loss, spectral normalization in
the discriminator (no batch norm there), two discriminator updates per
generator update, two time-scale learning rates and an EMA generator.

    python run.py --config=configs/sngan_cifar10.py
    python run.py --config=configs/sngan_cifar10.py:smoke

The same networks as configs/dcgan_cifar10.py, so the comparison at a fixed
step budget isolates the training recipe (README, "GANs").
"""

from jaxgen import configlib
from jaxgen.models import gan


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/sngan_cifar10.py")
  config = configlib.base_config()
  config.data.name = "cifar10"
  gan.add_model_config(config)
  m = config.model
  m.latent_dim = 128
  m.gen_widths = (256, 128, 64)
  m.disc_widths = (64, 128, 256)
  m.loss = "hinge"
  m.spectral_norm = True
  m.disc_norm = "none"
  m.disc_steps = 2
  # TTUR (Heusel et al. 2017): the discriminator learns faster.
  config.optimizer.learning_rate = 1e-4
  m.disc_learning_rate = 4e-4
  config.optimizer.b1 = 0.0
  config.optimizer.b2 = 0.9
  m.ema_decay = 0.999
  m.ema_start = 1_000

  # Each step: two D updates on 64 real images each, one G update on 64 fakes.
  config.train.batch_size = 128
  config.train.num_steps = 20_000
  config.train.log_every = 100
  config.train.checkpoint_every = 2_000
  config.train.snapshot_every = 1_000

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    gan.shrink_model_for_smoke(config)
    m.ema_start = 5
  return config
