"""The PyTorch twin of jaxgen's DCGAN (configs/dcgan_mnist.py, dcgan_cifar10.py).

The same networks (jaxgen/nets/gan.py: dense -> sub-pixel upsampling -> tanh;
space_to_depth + 3x3 convs -> dense score; batch norm with PyTorch's
momentum 0.1 = Flax's 0.9; N(0, 0.02) weights, zero biases), the same
non-saturating loss, Adam(2e-4, 0.5, 0.999), and the same step: one D update
on real + fresh fakes, then one G update on fresh fakes. Sampling in eval mode
(batch-norm running statistics), as jaxgen does.

Train it for a wall-clock budget and write 10,000 samples for jaxgen to score:

    pip install -r benchmarks/requirements.txt
    python benchmarks/torch_dcgan.py --dataset=mnist --seconds=900 --out=runs/torch_dcgan_mnist
    python run.py --config=configs/dcgan_mnist.py --mode=score \\
        --samples=runs/torch_dcgan_mnist/samples_10000.npz

benchmarks/speed.py times its train step against jaxgen's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# The shapes of configs/dcgan_{mnist,cifar10}.py.
CONFIGS = {
    "mnist": {"image_shape": (28, 28, 1), "latent_dim": 64,
              "gen_widths": (128, 64), "disc_widths": (64, 128), "batch_size": 64},
    "cifar10": {"image_shape": (32, 32, 3), "latent_dim": 128,
                "gen_widths": (256, 128, 64), "disc_widths": (64, 128, 256),
                "batch_size": 64},
}


def _init(module: nn.Module) -> None:
  if isinstance(module, (nn.Conv2d, nn.Linear)):
    nn.init.normal_(module.weight, 0.0, 0.02)
    nn.init.zeros_(module.bias)


class Generator(nn.Sequential):
  def __init__(self, image_shape, latent_dim, widths):
    height, width, channels = image_shape
    factor = 2 ** len(widths)
    self.coarse = (widths[0], height // factor, width // factor)
    layers = [nn.Linear(latent_dim, int(np.prod(self.coarse))),
              nn.Unflatten(1, self.coarse), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for prev, stage in zip(widths[:-1], widths[1:]):
      layers += [nn.Conv2d(prev, 4 * stage, 3, padding=1), nn.PixelShuffle(2),
                 nn.BatchNorm2d(stage), nn.ReLU()]
    layers += [nn.Conv2d(widths[-1], 4 * channels, 3, padding=1),
               nn.PixelShuffle(2), nn.Tanh()]
    super().__init__(*layers)
    self.apply(_init)


class Discriminator(nn.Sequential):
  def __init__(self, image_shape, widths):
    height, width, channels = image_shape
    layers, prev = [], channels
    for i, stage in enumerate(widths):
      layers += [nn.PixelUnshuffle(2), nn.Conv2d(4 * prev, stage, 3, padding=1)]
      if i > 0:
        layers.append(nn.BatchNorm2d(stage))
      layers.append(nn.LeakyReLU(0.2))
      prev = stage
    factor = 2 ** len(widths)
    layers += [nn.Flatten(), nn.Linear(prev * (height // factor) * (width // factor), 1)]
    super().__init__(*layers)
    self.apply(_init)


class DCGAN:
  """Networks, optimizers and the train step."""

  def __init__(self, dataset: str, seed: int = 0, device: str = "cpu",
               compile_nets: bool = False):
    """compile_nets: wrap both networks in torch.compile (the optimizer steps
    stay eager)."""
    torch.manual_seed(seed)
    c = CONFIGS[dataset]
    self.latent_dim = c["latent_dim"]
    self.batch_size = c["batch_size"]
    self.device = torch.device(device)
    self.gen = Generator(c["image_shape"], c["latent_dim"], c["gen_widths"]).to(self.device)
    self.disc = Discriminator(c["image_shape"], c["disc_widths"]).to(self.device)
    self.gen_opt = torch.optim.Adam(self.gen.parameters(), 2e-4, betas=(0.5, 0.999))
    self.disc_opt = torch.optim.Adam(self.disc.parameters(), 2e-4, betas=(0.5, 0.999))
    if compile_nets:
      self.gen, self.disc = torch.compile(self.gen), torch.compile(self.disc)

  def train_step(self, real_BCHW: torch.Tensor) -> dict[str, float]:
    """real_BCHW in [-1, 1]. Returns the losses as tensors (no host sync)."""
    b = real_BCHW.shape[0]
    fake = self.gen(torch.randn(b, self.latent_dim, device=self.device)).detach()
    disc_loss = (F.softplus(-self.disc(real_BCHW)).mean()
                 + F.softplus(self.disc(fake)).mean())
    self.disc_opt.zero_grad(set_to_none=True)
    disc_loss.backward()
    self.disc_opt.step()
    z = torch.randn(b, self.latent_dim, device=self.device)
    gen_loss = F.softplus(-self.disc(self.gen(z))).mean()
    self.gen_opt.zero_grad(set_to_none=True)
    gen_loss.backward()
    self.gen_opt.step()
    return {"disc_loss": disc_loss.detach(), "gen_loss": gen_loss.detach()}

  @torch.no_grad()
  def generate(self, z_BL: torch.Tensor) -> torch.Tensor:
    """G(z) in [0, 1], NCHW on the model's device, in eval mode (running
    batch-norm statistics), as jaxgen's sample()."""
    self.gen.eval()
    x = (self.gen(z_BL.to(self.device)) + 1.0) / 2.0
    self.gen.train()
    return x

  def sample(self, num: int, seed: int, chunk: int = 1000) -> np.ndarray:
    """uint8 NHWC samples."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num, chunk):
      z = torch.randn(min(chunk, num - start), self.latent_dim, generator=generator)
      x = self.generate(z)
      out.append(np.round(x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255
                          ).astype(np.uint8))
    return np.concatenate(out)


def load_train_images(dataset: str) -> np.ndarray:
  """The training images, uint8 NHWC, through jaxgen's loader (numpy only)."""
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from jaxgen import data  # pylint: disable=g-import-not-at-top
  return np.asarray(data.load(dataset).train.images)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=sorted(CONFIGS), default="mnist")
  parser.add_argument("--seconds", type=float, default=900.0,
                      help="wall-clock training budget")
  parser.add_argument("--max_steps", type=int, default=10 ** 9)
  parser.add_argument("--num_samples", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  images = load_train_images(args.dataset)
  real_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  model = DCGAN(args.dataset, args.seed)
  rng = np.random.default_rng(args.seed)
  order, cursor, step, log = rng.permutation(len(images)), 0, 0, []
  start = time.perf_counter()
  while time.perf_counter() - start < args.seconds and step < args.max_steps:
    if cursor + model.batch_size > len(order):
      order, cursor = rng.permutation(len(images)), 0
    index = torch.from_numpy(order[cursor:cursor + model.batch_size])
    cursor += model.batch_size
    real = real_all[index].float() / 127.5 - 1.0
    losses = model.train_step(real)
    step += 1
    if step % 100 == 0:
      log.append({"step": step, "seconds": round(time.perf_counter() - start, 2),
                  **{k: float(v) for k, v in losses.items()}})
  seconds = time.perf_counter() - start
  samples = model.sample(args.num_samples, seed=args.seed + 1)
  np.savez_compressed(out / f"samples_{args.num_samples}.npz", images=samples, step=step)
  summary = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
             "dataset": args.dataset, "steps": step, "wall_seconds": round(seconds, 2),
             "steps_per_second": round(step / seconds, 3), "log": log}
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"torch DCGAN {args.dataset}: {step} steps in {seconds:.0f}s "
        f"({step / seconds:.2f} steps/s) -> {out}")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
