"""Plain (deterministic) autoencoder on dynamically binarized MNIST.

    python run.py --config=configs/ae_mnist.py
    python run.py --config=configs/ae_mnist.py:smoke

The VAE's networks and data with z = f(x), no prior and no KL: the loss is the
Bernoulli reconstruction NLL alone. It reconstructs better than the VAE but is
not a generative model (no sample(); its eval.json has no sample metrics), and
its latent interpolations and test-code scatter show why: codes are packed
where the data put them, with gaps the decoder has never seen.
"""

from configs import vae_mnist
from jaxgen import configlib


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  configlib.parse_arg(arg, "configs/ae_mnist.py")
  config = vae_mnist.get_config(arg)
  config.model.family = "ae"
  return config
