"""RealNVP on CIFAR-10's 8-bit pixels (uniformly dequantized, logit space).

    python run.py --config=configs/realnvp_cifar10.py            # see README
    python run.py --config=configs/realnvp_cifar10.py:smoke      # seconds

Published RealNVP: 3.49 bits/dim (ResNet couplings, 8 blocks of 64 features);
this CPU-sized default is far smaller. Test numbers here are on the first
1,000 CIFAR-10 test images (all that ../shared/data has).
"""

from jaxgen import configlib
from jaxgen.models import flow


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/realnvp_cifar10.py")
  config = flow.flow_config("cifar10", "realnvp", options)
  config.model.logit_alpha = 0.05   # Dinh et al.'s CIFAR-10 value
  if configlib.SMOKE not in options:
    config.model.steps_per_level = 3
    config.model.width = 128
    config.train.steps_per_dispatch = 4   # README "Benchmarks"
  return config
