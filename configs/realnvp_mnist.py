"""RealNVP on MNIST's 8-bit pixels (uniformly dequantized, logit space).

    python run.py --config=configs/realnvp_mnist.py            # see README
    python run.py --config=configs/realnvp_mnist.py:smoke      # seconds

Checkerboard couplings at 28x28x1, a squeeze, channel couplings at 14x14x4,
half factored out, then checkerboard couplings at 14x14x2 (Dinh et al. 2017,
with actnorm for their batch norm).
"""

from jaxgen import configlib
from jaxgen.models import flow


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/realnvp_mnist.py")
  config = flow.flow_config("mnist", "realnvp", options)
  config.model.logit_alpha = 1e-6   # Dinh et al.'s MNIST value
  if configlib.SMOKE not in options:
    config.model.steps_per_level = 3
    config.model.width = 64
    config.train.steps_per_dispatch = 4   # README "Benchmarks"
  return config
