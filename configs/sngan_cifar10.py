"""SN-GAN on CIFAR-10: hinge loss, spectral normalization in the discriminator
(no batch norm there), two discriminator updates per generator update, two
time-scale learning rates and an EMA generator. The literature's recipe for
long (GPU) budgets; in the first thousands of steps it trails DCGAN and
configs/cgan_cifar10.py (README, "The GAN family").

    python run.py --config=configs/sngan_cifar10.py
    python run.py --config=configs/sngan_cifar10.py:smoke

The networks of configs/dcgan_cifar10.py, so a comparison at a fixed step
budget isolates the training recipe (README, "The GAN family").
"""

from configs import dcgan_cifar10
from jaxgen import configlib


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/sngan_cifar10.py")
  config = dcgan_cifar10.get_config(arg)
  m = config.model
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
  m.ema_start = 5 if configlib.SMOKE in options else 1_000
  # Each step: two D updates on 64 real images each, one G update on 64 fakes.
  config.train.batch_size *= 2
  return config
