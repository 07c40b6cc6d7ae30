"""Convolutional VAE on CIFAR-10 with a discretized logistic mixture decoder.

    python run.py --config=configs/vae_cifar10.py            # see README for time
    python run.py --config=configs/vae_cifar10.py:smoke      # seconds
    python run.py --config=configs/vae_cifar10.py --config.model.likelihood=gaussian
    python run.py --config=configs/vae_cifar10.py:ar         # local AR decoder

The latent is a map (8x8 locations x `latent_channels`), which keeps far more
of a colour image than one vector; the decoder gives each 8-bit pixel a
mixture of discretized logistics with its colour channels coupled, so the
negative ELBO in bits/dim bounds the NLL of the discrete images. Test numbers
here are on the first 1,000 CIFAR-10 test images (all that ../shared/data has).

`:ar` gives the decoder a local autoregressive head (each pixel also sees the
12 pixels before it in its 5x5 window; jaxgen/nets/autoregressive.py), trained
with free bits (a 0.25-nat floor on each latent dimension's KL) so the head
cannot leave the latent unused, at twice the learning rate for 4,000 steps.
Samples are then draws from p(x|z), drawn pixel by pixel. Rerunning on the
same workdir with `--config.train.num_steps=6000` continues it (a warm restart
of the cosine schedule); README gives the bits/dim at 4,000 and 6,000 steps.
"""

from jaxgen import configlib
from jaxgen.models import vae

AR = "ar"


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/vae_cifar10.py", extra=(AR,))
  config = configlib.base_config()
  config.data.name = "cifar10"
  config.data.binarize = "none"
  vae.add_model_config(config)
  m = config.model
  m.likelihood = "discretized_logistic"
  m.num_mixtures = 5
  m.latent_channels = 16         # an 8x8x16 latent map
  m.encoder_widths = (64, 128)
  m.decoder_widths = (128, 64)

  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.final_lr_fraction = 0.05
  config.optimizer.warmup_steps = 200

  config.train.batch_size = 64
  config.train.num_steps = 6_000
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.snapshot_every = 500
  config.eval.batch_size = 500

  if AR in options:
    m.ar_context = 5
    m.ar_hidden = 96
    m.free_nats = 0.25
    config.optimizer.learning_rate = 2e-3
    config.train.num_steps = 4_000

  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    vae.shrink_model_for_smoke(config)
    config.model.latent_channels = 4
    config.model.num_mixtures = 2
  return config
