"""Flax modules only: encoders, decoders and their building blocks. No losses."""

from __future__ import annotations

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
