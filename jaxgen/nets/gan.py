"""DCGAN-style generator and discriminator for 28x28 and 32x32 images.

Generator: z -> dense -> coarse map -> sub-pixel upsampling stages -> tanh
image in [-1, 1]; a label enters concatenated to z or as class-conditional
gains and biases of every norm layer (conditional batch norm).
Discriminator: downsampling stages -> dense score (+ a projection of the
label, Miyato & Koyama 2018; + class logits from a second head, AC-GAN).

Resampling avoids the layers XLA's CPU backend is slow at (README, "Speed"):
- up: a stride-1 3x3 conv to 4*C channels + depth_to_space(2) (sub-pixel),
  instead of a strided nn.ConvTranspose, whose gradient takes seconds per
  DCGAN step on CPU;
- down ("space_to_depth", the default): space_to_depth(2) then a stride-1 3x3
  conv. A strided conv's input gradient, which the generator's update needs
  through the discriminator, is itself a transposed conv; this layer sees the
  same 2x2 neighbourhoods through an ordinary conv. "strided" keeps the
  classic 4x4 stride-2 conv.

`dtype` is the compute dtype (bfloat16 for GPU/TPU tensor units): layers cast
their float32 params to it; batch and layer norm reduce in float32, spectral
norm's power iteration runs on the float32 weights, and images and scores
come back as float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets import at_least_float32
from jaxgen.nets.conv import depth_to_space, space_to_depth

# DCGAN's initialization (Radford et al. 2016): weights ~ N(0, 0.02).
_DCGAN_INIT = nn.initializers.normal(0.02)
NORMS = ("batch", "layer", "none")


GEN_CONDITIONING = ("concat", "norm")


def _norm(kind: str, train: bool, dtype: Any, affine: bool = True,
          momentum: float = 0.9):
  """`affine=False`: normalize only, for ConditionalNorm's per-class affine.
  `momentum` 0.9 = PyTorch's BatchNorm momentum 0.1; 0 makes a training-mode
  call store exactly its batch's statistics (standing statistics)."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                        epsilon=1e-5, dtype=dtype, use_scale=affine,
                        use_bias=affine)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_scale=affine,
                        use_bias=affine)
  return lambda x: x


class ConditionalNorm(nn.Module):
  """Batch or layer norm whose gain and bias are chosen by the label
  (conditional batch norm: de Vries et al. 2017; the generator of Miyato &
  Koyama's projection cGAN). The label enters every stage of G instead of
  only the input, so G cannot learn to ignore it. Gains start at 1 and biases
  at 0 for every class: at init the layer is the unconditional norm."""
  kind: str
  train: bool
  dtype: Any = None
  momentum: float = 0.9   # batch norm's running-statistics momentum

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, cond_BK: jax.Array) -> jax.Array:
    channels = x_BHWC.shape[-1]
    # A bias-free Dense on a one-hot label is a per-class lookup table.
    gain_BC = 1.0 + nn.Dense(channels, use_bias=False, kernel_init=nn.initializers.zeros,
                             dtype=self.dtype, name="class_gain")(cond_BK)
    bias_BC = nn.Dense(channels, use_bias=False, kernel_init=nn.initializers.zeros,
                       dtype=self.dtype, name="class_bias")(cond_BK)
    x = _norm(self.kind, self.train, self.dtype, affine=False,
              momentum=self.momentum)(x_BHWC)
    return x * gain_BC[:, None, None, :] + bias_BC[:, None, None, :]


class Generator(nn.Module):
  """`widths` run coarse to fine; widths[0] is the dense layer's map depth.

  28x28: coarse 7x7 (two upsampling stages, widths of length 2);
  32x32: coarse 4x4 (three stages). Each stage after the first: conv3x3 to
  4*width, depth_to_space(2), norm, ReLU. The output stage: conv3x3 to
  4*channels, depth_to_space(2), tanh.

  A label (`cond_BK`, one-hot) is concatenated to z (`conditioning="concat"`)
  or selects the gain and bias of every norm layer ("norm", ConditionalNorm).
  """
  image_shape: tuple[int, int, int]
  widths: Sequence[int]
  norm: str = "batch"
  conditioning: str = "concat"   # GEN_CONDITIONING
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)
  bn_momentum: float = 0.9   # 0: a training-mode call stores its batch's statistics

  @nn.compact
  def __call__(self, z_BL: jax.Array, cond_BK: jax.Array | None = None,
               train: bool = True) -> jax.Array:
    dt = self.dtype
    height, width, channels = self.image_shape
    factor = 2 ** len(self.widths)
    if height % factor or width % factor:
      raise ValueError(f"image {height}x{width} is not divisible by {factor} "
                       f"for a generator with {len(self.widths)} widths")
    coarse = (height // factor, width // factor)
    by_norm = cond_BK is not None and self.conditioning == "norm"
    if by_norm and self.norm == "none":
      raise ValueError("conditioning='norm' needs a norm layer ('batch' or 'layer')")
    if cond_BK is not None and not by_norm:
      z_BL = jnp.concatenate([z_BL, cond_BK.astype(z_BL.dtype)], -1)

    def norm(x):
      if by_norm:
        return ConditionalNorm(self.norm, train, dt, self.bn_momentum)(x, cond_BK)
      return _norm(self.norm, train, dt, momentum=self.bn_momentum)(x)

    x = nn.Dense(coarse[0] * coarse[1] * self.widths[0], kernel_init=_DCGAN_INIT,
                 dtype=dt)(z_BL)
    x = x.reshape(-1, *coarse, self.widths[0])
    x = nn.relu(norm(x))
    for stage_width in self.widths[1:]:
      x = nn.Conv(4 * stage_width, (3, 3), kernel_init=_DCGAN_INIT, dtype=dt)(x)
      x = nn.relu(norm(depth_to_space(x, 2)))
    x = nn.Conv(4 * channels, (3, 3), kernel_init=_DCGAN_INIT, dtype=dt)(x)
    return jnp.tanh(depth_to_space(at_least_float32(x), 2))


class Discriminator(nn.Module):
  """Downsampling stages of `widths` (fine to coarse), LeakyReLU(0.2), a dense
  score. The first stage has no norm (DCGAN). With `spectral_norm`, every
  weight matrix is divided by its top singular value, estimated by one power
  iteration per training call (Miyato et al. 2018). With `num_classes`, the
  score adds <embed(label), features> (projection discriminator). With
  `aux_classes`, a second dense head on the same features returns class logits
  too: `(score_B, class_logits_BK)` (the auxiliary classifier of AC-GAN)."""
  widths: Sequence[int]
  norm: str = "batch"
  spectral_norm: bool = False
  downsample: str = "space_to_depth"   # | "strided"
  num_classes: int = 0
  aux_classes: int = 0
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  def _layer(self, layer: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    if self.spectral_norm:
      return nn.SpectralNorm(layer, n_steps=1)(x, update_stats=train)
    return layer(x)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, labels_B: jax.Array | None = None,
               train: bool = True) -> jax.Array | tuple[jax.Array, jax.Array]:
    dt = self.dtype
    x = x_BHWC
    for i, width in enumerate(self.widths):
      if self.downsample == "strided":
        conv = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                       kernel_init=_DCGAN_INIT, dtype=dt)
        x = self._layer(conv, x, train)
      else:
        x = self._layer(nn.Conv(width, (3, 3), kernel_init=_DCGAN_INIT, dtype=dt),
                        space_to_depth(x, 2), train)
      if i > 0:
        x = _norm(self.norm, train, dt)(x)
      x = nn.leaky_relu(x, 0.2)
    h_BF = x.reshape(x.shape[0], -1)
    score_B = at_least_float32(self._layer(
        nn.Dense(1, kernel_init=_DCGAN_INIT, dtype=dt), h_BF, train)[:, 0])
    if self.num_classes:
      # The class embedding is not spectrally normalized (a table, not a map).
      embed = nn.Embed(self.num_classes, h_BF.shape[-1], embedding_init=_DCGAN_INIT)
      score_B = score_B + jnp.sum(embed(labels_B) * at_least_float32(h_BF), -1)
    if self.aux_classes:
      class_logits_BK = at_least_float32(self._layer(
          nn.Dense(self.aux_classes, kernel_init=_DCGAN_INIT, dtype=dt), h_BF, train))
      return score_B, class_logits_BK
    return score_B
