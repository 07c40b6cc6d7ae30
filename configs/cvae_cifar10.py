"""Label-conditional VAE on CIFAR-10 (discretized logistic mixture decoder).

    python run.py --config=configs/cvae_cifar10.py
    python run.py --config=configs/cvae_cifar10.py:smoke

vae_cifar10 with the one-hot label given to the encoder (as input channels) and
the decoder (as channels of its latent map); bits/dim are of p(x | label).
"""

from configs import vae_cifar10
from jaxgen import configlib


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  configlib.parse_arg(arg, "configs/cvae_cifar10.py")
  config = vae_cifar10.get_config(arg)
  config.model.conditional = True
  return config
