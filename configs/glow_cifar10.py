"""Glow on CIFAR-10's 8-bit pixels (uniformly dequantized): exact bits/dim.

    python run.py --config=configs/glow_cifar10.py            # see README
    python run.py --config=configs/glow_cifar10.py:gpu --config.train.max_seconds=330
    python run.py --config=configs/glow_cifar10.py:smoke      # seconds

Three levels: 16x16x12, 8x8x24, 4x4x48, half factored out after each of the
first two. Published Glow: 3.35 bits/dim (K=32, width 512, days on GPUs); this
CPU-sized default is far smaller (K=8, width 128). Test numbers here are on the
first 1,000 CIFAR-10 test images (all that ../shared/data has).
--config.model.dequantization=variational trains a q(n | x) for the noise
(Flow++); at this size it learns a nearly uniform q and gains nothing (README).

`:gpu` is the published network (K=32, width 512, 44.2M parameters) for one
GPU: coupling networks in bfloat16 (parameters and bijections float32), batch
128, a constant learning rate after warm-up so a wall-clock budget
(`train.max_seconds`) can stop it anywhere, an EMA of the weights for
evaluation and sampling, and training images mirrored at random (a GPU's
minutes are many epochs of the 30,000 images a lent machine can be sent). Each level's 32 steps run as one scan
(`model.scan_steps`), so the 96 steps compile once per level, in seconds; on a
CPU, XLA's weight gradient inside that scan makes a step 34-36x slower than
unrolled (README), so CPU runs keep the unrolled default.
"""

from jaxgen import configlib
from jaxgen.models import flow

GPU = "gpu"


def get_config(arg: str | None = None) -> configlib.ConfigDict:
  options = configlib.parse_arg(arg, "configs/glow_cifar10.py", extra=(GPU,))
  config = flow.flow_config("cifar10", "glow", options)
  m = config.model
  if GPU in options:
    m.compute_dtype = "bfloat16"    # the tensor units' type
    m.ema_decay = 0.999
    m.scan_steps = True             # compiles in seconds (README: slow on CPU)
    m.flip = True                   # a 44M flow, many epochs of a subset
    config.optimizer.schedule = "constant"
    if configlib.SMOKE not in options:
      m.steps_per_level = 32
      m.width = 512
      config.optimizer.warmup_steps = 500
      config.train.batch_size = 128
      config.train.num_steps = 200_000   # in practice: train.max_seconds
      config.train.checkpoint_every = 5_000
      config.train.snapshot_every = 5_000
  elif configlib.SMOKE not in options:
    m.steps_per_level = 8
    m.width = 128
    config.train.steps_per_dispatch = 4   # README "Benchmarks"
  return config
