"""DDPM on MNIST's 8-bit pixels, sized for a CPU: a 1M-parameter U-Net on 2x2
patches (14x14x4, then 7x7 with attention).

    python run.py --config=configs/ddpm_mnist.py            # see README for time
    python run.py --config=configs/ddpm_mnist.py:smoke      # seconds
    python run.py --config=configs/ddpm_mnist.py --config.model.conditional=True \\
        --config.model.guidance_scale=1.0                   # class-conditional

Samples (and the eval metrics) use DDIM with `model.sample_steps` steps;
eval.json also times DDPM's 1,000 steps and DDIM with 10 and 50.
"""

from jaxgen import configlib
from jaxgen.models import diffusion


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/ddpm_mnist.py")
  config = diffusion.diffusion_config("mnist", options)
  if configlib.SMOKE not in options:
    m = config.model
    m.base_width = 32
    m.width_multipliers = (1, 2)
    m.blocks_per_level = 2
    m.attention_resolutions = (7,)
    m.patch_size = 2
    m.ema_decay = 0.999           # short CPU runs: a shorter memory
    m.sample_steps = 25
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 200
    config.train.batch_size = 64
    config.train.num_steps = 20_000
    config.train.snapshot_every = 1_000
    config.train.steps_per_dispatch = 4   # README "Benchmarks"
  return config
