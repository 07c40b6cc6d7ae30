"""DDPM on CIFAR-10: a 6.5M-parameter U-Net for one GPU (or a patient CPU), or
the paper's 35.7M-parameter network.

    python run.py --config=configs/ddpm_cifar10.py          # see README for time
    python run.py --config=configs/ddpm_cifar10.py:paper    # Ho et al. 2020
    python run.py --config=configs/ddpm_cifar10.py:gpu --config.train.max_seconds=360
    python run.py --config=configs/ddpm_cifar10.py:cpu      # see README for time
    python run.py --config=configs/ddpm_cifar10.py:smoke    # seconds

The paper network: widths 128 x (1, 2, 2, 2), two residual blocks per level,
self-attention at 16x16, dropout 0.1, T = 1000 linear, batch 128, Adam 2e-4
with 5,000 warm-up steps, gradient clipping at 1, EMA 0.9999, 800k steps.
Samples and the eval metrics use DDIM with 50 steps.

`:gpu` is the README's 6-minute run on one H200: the default network made
class-conditional (guidance scale 2), in bfloat16 at batch 256 with a
constant learning rate after warm-up, so a wall-clock budget
(`train.max_seconds`) can stop it anywhere; the EMA weights sample.

`:cpu` is what two CPU cores train in about an hour and a half (README): a
class-conditional U-Net on 2x2 patches (16x16x12, attention at 8x8, i.e. at
16x16 in pixels) sampled with classifier-free guidance, which is what makes
short-run samples look like their classes; its eval draws fewer samples and
one bound timestep per image.
"""

from jaxgen import configlib
from jaxgen.models import diffusion

PAPER = "paper"
CPU = "cpu"
GPU = "gpu"


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/ddpm_cifar10.py", extra=(PAPER, CPU, GPU))
  sizes = sorted(options & {PAPER, CPU, GPU})
  if len(sizes) > 1:
    raise configlib.ConfigError(
        f"configs/ddpm_cifar10.py:{','.join(sizes)} names {len(sizes)} networks; "
        "pick one of paper, cpu, gpu (each may add ',smoke').")
  config = diffusion.diffusion_config("cifar10", options)
  m = config.model
  if PAPER in options:
    m.base_width = 128
    m.width_multipliers = (1, 2, 2, 2)
    config.optimizer.warmup_steps = 5_000
    config.train.num_steps = 800_000
    config.train.snapshot_every = 20_000
  elif CPU in options:
    # Structure here, sizes below: ':cpu,smoke' tests the same network shape.
    m.patch_size = 2
    m.dropout = 0.0                 # short runs do not overfit
    m.conditional = True
    m.guidance_scale = 2.0
    if configlib.SMOKE not in options:
      m.base_width = 64
      m.width_multipliers = (1, 2)
      m.attention_resolutions = (8,)
      m.ema_decay = 0.999
      m.bound_timesteps = 1
      config.optimizer.learning_rate = 5e-4
      config.optimizer.schedule = "cosine"   # anneals within the short run
      config.train.batch_size = 64
      config.train.num_steps = 3_600
      # A guided snapshot (monitor samples, 1,000-step views) takes minutes.
      config.train.snapshot_every = 3_600
      # Each guided sample costs 2 x sample_steps network passes.
      config.train.monitor_samples = 200
      config.eval.num_samples = 500
  elif GPU in options:
    m.conditional = True
    m.guidance_scale = 2.0
    m.compute_dtype = "bfloat16"    # the tensor units' type; params stay float32
    if configlib.SMOKE not in options:
      _default_network(config)
      config.optimizer.learning_rate = 3e-4
      config.train.batch_size = 256
      config.train.snapshot_every = 5_000
      config.train.checkpoint_every = 5_000
      m.bound_timesteps = 100       # a GPU affords 100 timesteps per test image
  elif configlib.SMOKE not in options:
    _default_network(config)
  return config


def _default_network(config: configlib.ConfigDict) -> None:
  m = config.model
  m.base_width = 64
  m.width_multipliers = (1, 2, 2)
  m.ema_decay = 0.9995
  config.train.num_steps = 100_000
