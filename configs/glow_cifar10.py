"""Glow on CIFAR-10's 8-bit pixels (uniformly dequantized): exact bits/dim.

    python run.py --config=configs/glow_cifar10.py            # see README
    python run.py --config=configs/glow_cifar10.py:smoke      # seconds

Three levels: 16x16x12, 8x8x24, 4x4x48, half factored out after each of the
first two. Published Glow: 3.35 bits/dim (K=32, width 512, days on GPUs); this
CPU-sized default is far smaller. Test numbers here are on the first 1,000
CIFAR-10 test images (all that ../shared/data has).
--config.model.dequantization=variational trains a q(n | x) for the noise
(Flow++); at this size it learns a nearly uniform q and gains nothing (README).
"""

from jaxgen import configlib
from jaxgen.models import flow


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/glow_cifar10.py")
  config = flow.flow_config("cifar10", "glow", options)
  if configlib.SMOKE not in options:
    config.model.steps_per_level = 8
    config.model.width = 128
    config.train.steps_per_dispatch = 4   # README "Benchmarks"
  return config
