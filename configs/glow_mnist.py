"""Glow on MNIST's 8-bit pixels (uniformly dequantized): exact bits/dim.

    python run.py --config=configs/glow_mnist.py            # see README for time
    python run.py --config=configs/glow_mnist.py:smoke      # seconds
    python run.py --config=configs/glow_mnist.py --config.model.steps_per_level=16

28x28x1 squeezes to 14x14x4 (K flow steps, then half factored out) and 7x7x8
(K steps). Published Glow reaches about 1.05 bits/dim on MNIST with far larger
networks; the README gives what this config reaches and how long it takes.
"""

from jaxgen import configlib
from jaxgen.models import flow


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/glow_mnist.py")
  config = flow.flow_config("mnist", "glow", options)
  if configlib.SMOKE not in options:
    config.model.steps_per_level = 8
    config.model.width = 64
  return config
