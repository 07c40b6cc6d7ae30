"""A local autoregressive pixel head for decoders (a one-layer PixelCNN).

A factorized decoder p(x|z) = prod_i p(x_i | z) must explain every pixel from
the latent alone, so the fine texture that neighbouring pixels share is paid
for in full. The head here lets each pixel also see the pixels above and to
its left within a `context` x `context` window:

    p(x | z) = prod_{i in raster order} p(x_i | x_<i in the window, features_i(z))

A causal ("type A", van den Oord et al. 2016) convolution of the image, whose
kernel is zero at the centre and at every later raster position, is added to
the decoder's feature map and passed through two pointwise layers to the
likelihood's parameters for each pixel. Training and likelihoods are one
parallel pass over the true image (teacher forcing), so the ELBO stays exact
and as cheap as a factorized decoder's. Drawing an image is sequential: one
pixel at a time in raster order (`decode_sequential`), each step touching only
that pixel's window, so it costs H*W tiny steps rather than H*W network passes.
The colour channels within a pixel are coupled by the likelihood itself
(jaxgen/likelihoods.py), so the head never needs a channel mask.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def causal_mask(context: int, in_channels: int, out_channels: int) -> np.ndarray:
  """[k, k, in, out] mask of a type-A kernel: 1 on the rows above the centre
  and left of it in the centre row, 0 at the centre and after it."""
  mask = np.zeros((context, context, in_channels, out_channels), np.float32)
  centre = context // 2
  mask[:centre] = 1.0
  mask[centre, :centre] = 1.0
  return mask


class LocalARHead(nn.Module):
  """Decoder features [B, H, W, F] and the image in [0, 1] -> the likelihood's
  parameters [B, H, W, out_channels], each pixel's from its causal window."""
  context: int            # odd window size; 3 sees 4 pixels, 5 sees 12
  channels: int           # image channels C
  hidden: int             # = F, the decoder's feature channels
  out_channels: int

  def setup(self):
    if self.context < 3 or self.context % 2 == 0:
      raise ValueError(f"LocalARHead: context must be an odd size >= 3, got "
                       f"{self.context}")
    self.window_kernel = self.param(
        "window_kernel", nn.initializers.lecun_normal(),
        (self.context, self.context, self.channels, self.hidden))
    self.window_bias = self.param("window_bias", nn.initializers.zeros,
                                  (self.hidden,))
    self.mix = nn.Dense(self.hidden, name="mix")
    self.out = nn.Dense(self.out_channels, name="out")

  def _masked_kernel(self) -> jax.Array:
    return self.window_kernel * causal_mask(self.context, self.channels,
                                            self.hidden)

  def _head(self, pre_XF: jax.Array, features_XF: jax.Array) -> jax.Array:
    h = nn.relu(pre_XF + self.window_bias + features_XF)
    return self.out(nn.relu(self.mix(h)))

  def __call__(self, features_BHWF: jax.Array, x01_BHWC: jax.Array) -> jax.Array:
    kernel = self._masked_kernel()
    # The image in the kernel's dtype, as nn.Conv promotes its input: float32
    # pixels meet float64 params in benchmarks/torch_vae.py's float64 check.
    pre = jax.lax.conv_general_dilated(
        (x01_BHWC * 2.0 - 1.0).astype(kernel.dtype), kernel, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return self._head(pre, features_BHWF)

  def at_pixel(self, features_BF: jax.Array, window_BKKC: jax.Array
               ) -> jax.Array:
    """One pixel's parameters [B, out] from its feature vector and the
    [k, k] window of the image (in [0, 1]) centred on it."""
    pre = jnp.einsum("bijc,ijcf->bf", window_BKKC * 2.0 - 1.0,
                     self._masked_kernel())
    return self._head(pre, features_BF)


def decode_sequential(
    head: LocalARHead, params, features_BHWF: jax.Array, channels: int,
    pixel_value: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array
) -> jax.Array:
  """Generates images pixel by pixel in raster order.

  pixel_value(key, out_B11P) -> [B, 1, 1, C] in [0, 1] turns one pixel's
  parameters into its value (a draw from the likelihood, or its mean); the
  value is written into the canvas that later pixels' windows read. Pixels
  outside the image read as 0 on the [-1, 1] scale, as the "SAME" padding of
  the parallel pass does. Returns [B, H, W, C] in [0, 1].
  """
  b, height, width, _ = features_BHWF.shape
  pad = head.context // 2
  # The canvas holds the image in [0, 1]; its border is 0.5 (0 on [-1, 1]).
  canvas = jnp.full((b, height + 2 * pad, width + 2 * pad, channels), 0.5,
                    features_BHWF.dtype)

  def step(index, canvas):
    row, col = index // width, index % width
    window = jax.lax.dynamic_slice(
        canvas, (0, row, col, 0), (b, head.context, head.context, channels))
    features = jax.lax.dynamic_slice(
        features_BHWF, (0, row, col, 0), (b, 1, 1, features_BHWF.shape[-1]))
    out_BP = head.apply(params, features[:, 0, 0], window,
                        method=LocalARHead.at_pixel)
    value = pixel_value(jax.random.fold_in(key, index), out_BP[:, None, None])
    return jax.lax.dynamic_update_slice(
        canvas, value.astype(canvas.dtype), (0, row + pad, col + pad, 0))

  canvas = jax.lax.fori_loop(0, height * width, step, canvas)
  return canvas[:, pad:pad + height, pad:pad + width]
