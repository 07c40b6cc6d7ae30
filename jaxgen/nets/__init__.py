"""Flax modules only: encoders, decoders and their building blocks. No losses."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def compute_dtype(name: str) -> Any:
  """`model.compute_dtype` as a Flax layer dtype: "bfloat16" computes in
  bfloat16; "float32" gives None, Flax's "the params' dtype", which is float32
  in training and float64 in the PyTorch twins' float64 checks."""
  return None if name == "float32" else jnp.dtype(name)


def at_least_float32(x: jax.Array) -> jax.Array:
  """A network's output back in float32 (or wider) for the loss."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def max_pool(x_BHWC: jax.Array, window: int = 2) -> jax.Array:
  """Max pooling over non-overlapping window x window tiles: nn.max_pool(x,
  (window, window), (window, window)), values and derivatives bit for bit
  (a tie's derivative goes to the first maximum in row-major order, as XLA's
  and PyTorch's pooling choose; a remainder row or column is dropped, as
  "VALID" padding does).

  Why not nn.max_pool: XLA differentiates its reduce_window through
  select_and_gather_add, which on CPU takes 8-18x longer than this tile
  reshape with an explicit derivative (2x2 tiles of [128, 14, 14, 32]: 4.5
  against 0.3 ms; [256, 32, 32, 64]: 243 against 34 ms, forward and
  backward, 2 CPU cores), more than the convolutions around it. The
  derivative is a JVP rule, so forward mode works too and reverse mode is
  its transpose.
  """
  return _max_pool(x_BHWC, window)


def _tiles(x_BHWC: jax.Array, window: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/k, k, W/k, k, C], a remainder row or column cut."""
  b, h, w, c = x_BHWC.shape
  rows, cols = h // window, w // window
  return x_BHWC[:, :rows * window, :cols * window].reshape(
      b, rows, window, cols, window, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x_BHWC: jax.Array, window: int) -> jax.Array:
  return jnp.max(_tiles(x_BHWC, window), axis=(2, 4))


@_max_pool.defjvp
def _max_pool_jvp(window: int, primals, tangents):
  (x_BHWC,), (dx_BHWC,) = primals, tangents
  tiles, d_tiles = _tiles(x_BHWC, window), _tiles(dx_BHWC, window)
  pooled = jnp.max(tiles, axis=(2, 4))
  taken = jnp.zeros(pooled.shape, bool)
  d_pooled = jnp.zeros_like(pooled)
  for i in range(window):
    for j in range(window):
      first_max = (tiles[:, :, i, :, j, :] == pooled) & ~taken
      taken = taken | first_max
      d_pooled = d_pooled + jnp.where(first_max, d_tiles[:, :, i, :, j, :], 0)
  return pooled, d_pooled


# Up to how many channels a convolution's narrow side counts as few: the
# flows' coupling networks map 2-12 channels to 64-128 and back. Measured on
# 2 CPU cores, train steps: glow_cifar10 557 ms with lax alone, 532 with 4,
# 504 with 8, 489-507 with 12, 512 with 16, 548 with 24; realnvp_cifar10
# 1,127, 999, 790, 802 (4, 8, 12).
_FEW_CHANNELS = 12
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None
                         ) -> jax.Array:
  """lax.conv_general_dilated, the same function, computed faster by XLA's
  CPU backend where a stride-1 NHWC convolution is really a matrix product
  (flax.linen.Conv takes it as `conv_general_dilated`; see `Conv`).

  XLA differentiates a convolution by more convolutions, the kernel's
  derivative being one whose "kernel" is the whole feature map, behind
  layout transposes. On CPU these are slow where the kernel is 1x1 or one
  side has few channels (the flows' coupling networks: 2 to 12 channels of
  the image's half against 64 or 128 hidden ones), and so is the forward
  pass from many channels to few. There the convolution and the terms of
  its derivative are written as matrix products (a forward-mode rule;
  reverse mode is its transpose):
  - 1x1 kernel ("pointwise"): the kernel's term is x @ dk at every pixel;
  - k x k, at most 12 output channels and more input channels ("taps"): the
    output and the kernel's term are every tap's product at once (x @ k as
    [C_in, k*k*C_out]), the k*k taps then shifted and summed;
  - k x k, at most 12 input channels and more output channels ("patches"):
    the input's term is the k*k shifted copies of dx side by side (im2col)
    @ k as [k*k*C_in, C_out], whose transpose is one product and a shifted
    sum of few channels.
  Everything else, and every backend but CPU (lax.platform_dependent), is
  lax's own convolution. Measured on 2 CPU cores, forward and backward of
  RealNVP's coupling network (conv3x3 2->64, conv1x1 64->64, conv3x3 64->2
  at 28x28, batch 64): 75 ms with lax, 53 ms with these (PyTorch: 47-60).
  The buffers of a step grow (realnvp_mnist 250 -> 296 MiB): the patches are
  kept for the backward pass.
  """
  rule = _matmul_rule(lhs, rhs, window_strides, padding, lhs_dilation,
                      rhs_dilation, dimension_numbers, feature_group_count,
                      batch_group_count, preferred_element_type)
  if rule is None:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_nhwc(lhs, rhs, pads, rule, precision)


def _matmul_rule(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, batch_group_count,
                 preferred_element_type) -> str | None:
  """"pointwise", "taps", "patches", or None (lax's own) for a convolution."""
  if lhs.ndim != 4 or preferred_element_type is not None:
    return None
  plain = (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
           and tuple(window_strides) == (1, 1)
           and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
           and feature_group_count == 1 and batch_group_count == 1)
  if not plain:
    return None
  kh, kw, c_in, c_out = rhs.shape
  if (kh, kw) == (1, 1):
    unpadded = padding in ("SAME", "VALID") or all(
        tuple(p) == (0, 0) for p in padding)
    return "pointwise" if unpadded else None
  if c_out <= _FEW_CHANNELS < c_in:
    return "taps"
  if c_in <= _FEW_CHANNELS < c_out:
    return "patches"
  return None


def _lax_conv(x_BHWC, kernel_HWIO, pads, precision):
  return jax.lax.conv_general_dilated(x_BHWC, kernel_HWIO, (1, 1), pads,
                                      dimension_numbers=_NHWC, precision=precision)


def _pointwise_conv(x_BHWC, kernel_HWIO, pads, precision):
  del pads  # a 1x1 kernel, unpadded
  return jnp.einsum("bhwc,cd->bhwd", x_BHWC, kernel_HWIO[0, 0], precision=precision)


def _windows(x_BHWC, kernel_shape, pads) -> list[jax.Array]:
  """The kh*kw shifted windows of the padded map that a stride-1 convolution
  reads, one per kernel tap (i, j) in row-major order, each output-sized."""
  kh, kw = kernel_shape[:2]
  padded = jnp.pad(x_BHWC, ((0, 0), *pads, (0, 0)))
  out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
  return [padded[:, i:i + out_h, j:j + out_w] for i in range(kh) for j in range(kw)]


def _taps_conv(x_BHWC, kernel_HWIO, pads, precision):
  kh, kw, c_in, c_out = kernel_HWIO.shape
  per_tap = kernel_HWIO.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
  taps = jnp.einsum("bhwc,cd->bhwd", x_BHWC, per_tap, precision=precision)
  return sum(window[..., tap * c_out:(tap + 1) * c_out]
             for tap, window in enumerate(_windows(taps, kernel_HWIO.shape, pads)))


def _patches_conv(x_BHWC, kernel_HWIO, pads, precision):
  kh, kw, c_in, c_out = kernel_HWIO.shape
  patches = jnp.concatenate(_windows(x_BHWC, kernel_HWIO.shape, pads), -1)
  return jnp.einsum("bhwc,cd->bhwd", patches,
                    kernel_HWIO.reshape(kh * kw * c_in, c_out), precision=precision)


# rule -> how the CPU computes (the output, the input's term, the kernel's term)
_CPU_TERMS = {
    "pointwise": (_lax_conv, _lax_conv, _pointwise_conv),
    "taps": (_taps_conv, _lax_conv, _taps_conv),
    "patches": (_lax_conv, _patches_conv, _lax_conv),
}


def _on_cpu(fn, x_BHWC, kernel_HWIO, pads, precision):
  if fn is _lax_conv:
    return _lax_conv(x_BHWC, kernel_HWIO, pads, precision)
  return jax.lax.platform_dependent(
      x_BHWC, kernel_HWIO,
      cpu=functools.partial(fn, pads=pads, precision=precision),
      default=functools.partial(_lax_conv, pads=pads, precision=precision))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x_BHWC, kernel_HWIO, pads, rule, precision):
  return _on_cpu(_CPU_TERMS[rule][0], x_BHWC, kernel_HWIO, pads, precision)


@_conv_nhwc.defjvp
def _conv_nhwc_jvp(pads, rule, precision, primals, tangents):
  (x, kernel), (dx, dkernel) = primals, tangents
  _, input_term, kernel_term = _CPU_TERMS[rule]
  y = _conv_nhwc(x, kernel, pads, rule, precision)
  return y, (_on_cpu(input_term, dx, kernel, pads, precision)
             + _on_cpu(kernel_term, x, dkernel, pads, precision))


def Conv(*args, **kwargs) -> nn.Conv:  # noqa: N802 (stands in for a class)
  """flax.linen.Conv computing with `conv_general_dilated` above: the same
  module, parameters and function, with its matrix-product paths on CPU."""
  return nn.Conv(*args, conv_general_dilated=conv_general_dilated, **kwargs)
