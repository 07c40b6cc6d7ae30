"""Convolutional encoder and decoder for small images (28x28 and 32x32).

Upsampling is sub-pixel (a 3x3 conv to r*r*C channels, then depth_to_space)
rather than a strided `nn.ConvTranspose`: on CPU, XLA's gradient of a strided
transposed convolution takes seconds per step, while the sub-pixel layer is an
ordinary stride-1 convolution plus a reshape, and the decoder's convolutions
run at the coarse resolutions (benchmarks/decoder_upsampling.py and the README
give the timings). Sub-pixel keeps the learned upsampling of ConvTranspose
without its checkerboard artifacts (Shi et al. 2016) and without the slow
gradient.

`dtype` is the compute dtype (bfloat16 for GPU/TPU tensor units): layers cast
their float32 params to it and the outputs come back as float32 for the
likelihood and the KL.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets import at_least_float32


def depth_to_space(x_BHWC: jax.Array, r: int) -> jax.Array:
  """[B, H, W, r*r*C] -> [B, H*r, W*r, C] (TensorFlow's depth_to_space order)."""
  b, h, w, c = x_BHWC.shape
  if c % (r * r):
    raise ValueError(f"depth_to_space: {c} channels not divisible by r*r={r * r}")
  x = x_BHWC.reshape(b, h, w, r, r, c // (r * r))
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * r, w * r, c // (r * r))


def space_to_depth(x_BHWC: jax.Array, r: int) -> jax.Array:
  """Inverse of depth_to_space: [B, H, W, C] -> [B, H/r, W/r, r*r*C]."""
  b, h, w, c = x_BHWC.shape
  x = x_BHWC.reshape(b, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // r, w // r, r * r * c)


def append_channels(x_BHWC: jax.Array, cond_BK: jax.Array) -> jax.Array:
  """[B, H, W, C] + [B, K] -> [B, H, W, C + K], the K values at every pixel
  (how a label reaches a convolution)."""
  cond = jnp.broadcast_to(cond_BK[:, None, None, :].astype(x_BHWC.dtype),
                          (*x_BHWC.shape[:3], cond_BK.shape[-1]))
  return jnp.concatenate([x_BHWC, cond], -1)


class ResBlock(nn.Module):
  """x + conv(act(conv(act(x)))), 3x3, width kept."""
  act: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = nn.Conv(width, (3, 3), dtype=self.dtype)(self.act(x))
    return x + nn.Conv(width, (3, 3), dtype=self.dtype)(self.act(h))


class ConvEncoder(nn.Module):
  """Strided 3x3 convs halving resolution per width, then a dense layer.

  Maps images in [0, 1] to `num_outputs` features (e.g. 2 * latent_dim for a
  Gaussian posterior's mean and log-variance). With `spatial`, no dense layer:
  a 3x3 conv gives a [B, h, w, num_outputs] map at the coarsest resolution
  (a latent per location, which carries far more detail of a colour image).
  """
  widths: Sequence[int]
  hidden: int
  num_outputs: int
  res_blocks: int = 0           # residual blocks after each strided conv
  spatial: bool = False
  act: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    dt = self.dtype
    x = x_BHWC * 2.0 - 1.0
    for width in self.widths:
      x = self.act(nn.Conv(width, (3, 3), strides=(2, 2), dtype=dt)(x))
      for _ in range(self.res_blocks):
        x = ResBlock(self.act, dt)(x)
    if self.spatial:
      out = nn.Conv(self.num_outputs, (3, 3), dtype=dt)(
          self.act(x) if self.res_blocks else x)
    else:
      x = x.reshape(x.shape[0], -1)
      x = self.act(nn.Dense(self.hidden, dtype=dt)(x))
      out = nn.Dense(self.num_outputs, dtype=dt)(x)
    return at_least_float32(out)


class ConvDecoder(nn.Module):
  """Dense layers to a coarse feature map, then sub-pixel upsampling stages.

  `widths` run from coarse to fine: widths[0] is the channel count of the
  dense layer's coarse map; each later stage is a 3x3 conv to 4*width channels
  followed by depth_to_space(2), then a 3x3 conv at the new resolution.
  The output conv produces 4*out_channels and a final depth_to_space(2), so no
  convolution ever runs at full resolution (the expensive one on CPU).
  With `latent_grid` = (h, w, c) the latent vector is that map, taken to
  widths[0] channels by a 3x3 conv instead of the dense layers.
  Returns unnormalized outputs (logits, or a likelihood's parameters), with
  `out_channels` per pixel (default: the image's channels). `cond_BK` (e.g. a
  one-hot label) joins the latent: appended to the vector, or broadcast as
  extra channels of the map.
  """
  image_shape: tuple[int, int, int]
  widths: Sequence[int]
  hidden: int
  out_channels: int | None = None
  res_blocks: int = 0           # residual blocks at each resolution
  latent_grid: tuple[int, int, int] | None = None
  act: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, z_BL: jax.Array, cond_BK: jax.Array | None = None
               ) -> jax.Array:
    dt = self.dtype
    height, width, channels = self.image_shape
    out_channels = self.out_channels or channels
    factor = 2 ** len(self.widths)  # upsampling stages + the output stage
    if height % factor or width % factor:
      raise ValueError(f"image {height}x{width} is not divisible by {factor} "
                       f"for a decoder with {len(self.widths)} stages")
    coarse = (height // factor, width // factor)
    if self.latent_grid is not None:
      if tuple(self.latent_grid[:2]) != coarse:
        raise ValueError(f"latent grid {self.latent_grid[:2]} does not match the "
                         f"decoder's coarsest resolution {coarse}")
      x = z_BL.reshape(-1, *self.latent_grid)
      if cond_BK is not None:
        x = append_channels(x, cond_BK)
      x = self.act(nn.Conv(self.widths[0], (3, 3), dtype=dt)(x))
    else:
      if cond_BK is not None:
        z_BL = jnp.concatenate([z_BL, cond_BK], -1)
      x = self.act(nn.Dense(self.hidden, dtype=dt)(z_BL))
      x = self.act(nn.Dense(coarse[0] * coarse[1] * self.widths[0], dtype=dt)(x))
      x = x.reshape(-1, *coarse, self.widths[0])
    for _ in range(self.res_blocks):
      x = ResBlock(self.act, dt)(x)
    for stage_width in self.widths[1:]:
      x = self.act(depth_to_space(nn.Conv(4 * stage_width, (3, 3), dtype=dt)(x), 2))
      x = self.act(nn.Conv(stage_width, (3, 3), dtype=dt)(x))
      for _ in range(self.res_blocks):
        x = ResBlock(self.act, dt)(x)
    if self.res_blocks:
      x = self.act(x)
    x = nn.Conv(4 * out_channels, (3, 3), dtype=dt)(x)
    return depth_to_space(at_least_float32(x), 2)
