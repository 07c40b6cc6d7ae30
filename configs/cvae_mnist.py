"""Label-conditional VAE on dynamically binarized MNIST.

    python run.py --config=configs/cvae_mnist.py
    python run.py --config=configs/cvae_mnist.py:smoke

Encoder and decoder both see the one-hot label. The snapshots include
samples/true_vs_wrong_labels_step_*.png (each test image, its reconstruction
with the true label, and with a wrong label: the decoder then draws the wrong
digit in the image's style) and samples/class_by_style_step_*.png.
"""

from configs import vae_mnist
from jaxgen import configlib


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  configlib.parse_arg(arg, "configs/cvae_mnist.py")
  config = vae_mnist.get_config(arg)
  config.model.conditional = True
  return config
