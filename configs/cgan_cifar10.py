"""A class-conditional hinge GAN (labels concatenated to z in G, a projection
discriminator, Miyato & Koyama 2018) on the DCGAN networks, batch norm and
optimizer.

    python run.py --config=configs/cgan_cifar10.py
    python run.py --config=configs/cgan_cifar10.py:smoke

Only the loss and the conditioning differ from configs/dcgan_cifar10.py, so a
comparison at a fixed step budget isolates them. Samples are drawn for the
labels i % 10, so their label marginal is the data's (uniform) and the
Frechet distance compares the same p(x) as an unconditional model's.
At 3,000 steps it ties DCGAN over several seeds (README, "The GAN family"),
its G using the label only partly (configs/acgan_cifar10.py adds a class
loss that makes it use the label); configs/sngan_cifar10.py (spectral norm,
no batch norm in D) learns more slowly in its first thousands of steps and
loses to both there.
"""

from configs import dcgan_cifar10
from jaxgen import configlib


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  configlib.parse_arg(arg, "configs/cgan_cifar10.py")
  config = dcgan_cifar10.get_config(arg)
  config.model.loss = "hinge"
  config.model.conditional = True
  return config
