"""AC-GAN on CIFAR-10: configs/cgan_cifar10.py (DCGAN networks, batch norm and
optimizer; hinge loss; labels concatenated to z in G; projection
discriminator) plus an auxiliary classifier (Odena et al. 2017): D's class head
learns the labels of real images, and G is trained to have its fakes classified
as the label they were drawn for.

    python run.py --config=configs/acgan_cifar10.py
    python run.py --config=configs/acgan_cifar10.py:smoke

The conditional hinge GAN alone ties DCGAN at 3,000 steps: its G uses the label
only partly (31% of its samples classified as the label asked for). The
class loss makes the label matter from the first hundreds of steps (README,
"The GAN family", for the comparison with DCGAN at the same step budget).
"""

from configs import cgan_cifar10
from jaxgen import configlib


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  configlib.parse_arg(arg, "configs/acgan_cifar10.py")
  config = cgan_cifar10.get_config(arg)
  config.model.aux_classifier_weight = 1.0
  return config
