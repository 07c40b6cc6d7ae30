"""Flax modules only: encoders, decoders and their building blocks. No losses."""

from __future__ import annotations

import functools
from typing import Any

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
