"""Times forward+backward of the VAE decoder with three kinds of upsampling.

    python benchmarks/decoder_upsampling.py [--batch=128] [--repeats=20]

All three decoders map a 32-d latent to 28x28x1 logits through the same dense
layers and channel widths (7x7x64 -> 14x14x32 -> 28x28x1); they differ only in
how they double the resolution:
  conv_transpose  nn.ConvTranspose(stride 2), the textbook DCGAN/VAE decoder
  resize_conv     nearest-neighbour resize, then a 3x3 conv
  subpixel        3x3 conv to 4x channels, then depth_to_space (jaxgen's choice)
Prints milliseconds per step (median) of a jitted grad of a sum of squares,
with the XLA CPU setting run.py applies (jaxgen/xla_cpu.py);
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`
times jaxlib's default instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top

xla_cpu.use_fast_cpu_convolutions()  # before jax starts, as run.py does

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from jaxgen.nets.conv import depth_to_space  # pylint: disable=g-import-not-at-top


def upsample(kind: str, x, channels: int):
  if kind == "conv_transpose":
    return nn.ConvTranspose(channels, (3, 3), strides=(2, 2))(x)
  if kind == "resize_conv":
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
    return nn.Conv(channels, (3, 3))(x)
  return depth_to_space(nn.Conv(4 * channels, (3, 3))(x), 2)


class Decoder(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, z):
    x = nn.relu(nn.Dense(512)(z))
    x = nn.relu(nn.Dense(7 * 7 * 64)(x)).reshape(-1, 7, 7, 64)
    x = nn.relu(upsample(self.kind, x, 32))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    return upsample(self.kind, x, 1)


def time_kind(kind: str, batch: int, repeats: int) -> float:
  model = Decoder(kind)
  z = jax.random.normal(jax.random.PRNGKey(0), (batch, 32))
  params = model.init(jax.random.PRNGKey(1), z)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, z) ** 2)))
  jax.block_until_ready(grad(params))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(grad(params))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"batch {args.batch}, decoder forward+backward, median of {args.repeats}")
  for kind in ("conv_transpose", "resize_conv", "subpixel"):
    print(f"  {kind:15s} {time_kind(kind, args.batch, args.repeats):8.1f} ms/step")


if __name__ == "__main__":
  main()
