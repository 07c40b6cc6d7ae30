"""The DDPM U-Net (Ho et al. 2020): residual blocks with group norm and a
sinusoidal time embedding, self-attention at chosen resolutions, dropout.

    x_t [B, H, W, C], t [B] (int), label [B] (optional) -> [B, H, W, C]

Widths are `base_width * width_multipliers[level]`, with `blocks_per_level`
residual blocks per level on the way down and one more on the way up, as in
the paper; `base_width=128, width_multipliers=(1, 2, 2, 2), blocks_per_level=2,
attention_resolutions=(16,)` is its 35.7M-parameter CIFAR-10 network.

Resampling avoids strided convolutions, whose input gradients XLA computes
slowly on CPU (the transposed-convolution trap of the README), and keeps every
resampling conv at the coarse resolution: down is a 2x2 average pool then a
3x3 conv, up is a 3x3 conv then nearest-neighbour repetition. The kernels are
the paper's (same parameter count); the paper convolves at the fine side,
which costs 4x the FLOPs there.

`dtype` is the compute dtype (bfloat16 for GPU/TPU tensor units): layers cast
their float32 params to it, group norm reduces in float32, attention's softmax
runs in float32, and the output comes back as float32 for the loss.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets import at_least_float32
from jaxgen.nets.conv import depth_to_space, space_to_depth


def timestep_embedding(t_B: jax.Array, dim: int, max_period: float = 10_000.0
                       ) -> jax.Array:
  """Transformer-style sinusoids of the (integer) timestep: [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / max(half - 1, 1))
  angles = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _group_norm(width: int, dtype: Any) -> nn.GroupNorm:
  # 32 groups as in the paper, fewer for the narrow CPU-sized nets, and never
  # one channel per group: the time (and label) embedding enters as a shift
  # per channel, which a one-channel group's normalisation would erase.
  groups = math.gcd(min(32, max(width // 4, 1)), width)
  return nn.GroupNorm(num_groups=groups, dtype=dtype)


class QKVProjection(nn.Module):
  """nn.Dense(3 * features) split into query, key and value, with that
  layer's parameters (kernel [in, 3 features], bias [3 features]), computed
  as three products with the kernel's column blocks. Why: slicing one
  product's output makes its gradient three zero-padded copies summed and
  then transposed for the kernel's gradient, one fused loop that XLA's CPU
  runs slowly (the attention block at [64, 8, 8, 128], forward and
  backward, 2 cores: 57 ms, 14 of them in that loop; 20 ms written this
  way; `ddpm_mnist`'s whole step about 7% shorter)."""
  features: int
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    c = self.features
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], 3 * c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (3 * c,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return tuple(jnp.dot(x, kernel[:, i * c:(i + 1) * c]) + bias[i * c:(i + 1) * c]
                 for i in range(3))


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv, + the projected time embedding, GroupNorm-swish-
  dropout-conv, with a 1x1 skip projection when the width changes."""
  width: int
  dropout: float
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, x_BHWC, emb_BE, train: bool):
    dt = self.dtype
    h = nn.Conv(self.width, (3, 3), dtype=dt)(
        nn.swish(_group_norm(x_BHWC.shape[-1], dt)(x_BHWC)))
    h = h + nn.Dense(self.width, dtype=dt)(nn.swish(emb_BE))[:, None, None, :]
    h = nn.swish(_group_norm(self.width, dt)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    # Zero-initialised last conv: each block starts as the identity.
    h = nn.Conv(self.width, (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)
    if x_BHWC.shape[-1] != self.width:
      x_BHWC = nn.Conv(self.width, (1, 1), dtype=dt)(x_BHWC)
    return x_BHWC + h


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H*W positions, residual."""
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, x_BHWC):
    b, h, w, c = x_BHWC.shape
    dt = self.dtype
    # Named as the nn.Dense layers they replace were, so checkpoints load.
    q, k, v = QKVProjection(c, dt, name="Dense_0")(
        _group_norm(c, dt)(x_BHWC).reshape(b, h * w, c))
    logits = at_least_float32(jnp.einsum("bqc,bkc->bqk", q, k)) / math.sqrt(c)
    weights = jax.nn.softmax(logits, -1).astype(q.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
    return x_BHWC + nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=dt,
                             name="Dense_1")(out)


class UNet(nn.Module):
  """Predicts the diffusion target (noise, x0 or v) from x_t and t.

  With num_classes > 0 the label's embedding joins the time embedding; label
  `num_classes` is the "no label" class that classifier-free guidance trains
  with and samples from.
  """
  base_width: int = 64
  width_multipliers: Sequence[int] = (1, 2, 2)
  blocks_per_level: int = 2
  attention_resolutions: Sequence[int] = ()
  dropout: float = 0.1
  num_classes: int = 0
  # > 1: the net runs on patch x patch blocks folded into channels
  # (space_to_depth), 1/patch^2 of the FLOPs; what makes MNIST trainable on CPU.
  patch_size: int = 1
  dtype: Any = None  # compute dtype (None: the params'; jaxgen.nets)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, t_B: jax.Array,
               label_B: jax.Array | None = None, train: bool = False) -> jax.Array:
    dt = self.dtype
    emb_dim = 4 * self.base_width
    emb = timestep_embedding(t_B, self.base_width)
    emb = nn.Dense(emb_dim, dtype=dt)(nn.swish(nn.Dense(emb_dim, dtype=dt)(emb)))
    if self.num_classes:
      if label_B is None:
        raise ValueError("a class-conditional U-Net needs labels "
                         f"(0..{self.num_classes}, {self.num_classes} = none)")
      emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=dt)(label_B)

    def block(h, width):
      h = ResnetBlock(width, self.dropout, dt)(h, emb, train)
      return (AttentionBlock(dt)(h) if h.shape[1] in self.attention_resolutions
              else h)

    x = space_to_depth(x_BHWC, self.patch_size) if self.patch_size > 1 else x_BHWC
    h = nn.Conv(self.base_width, (3, 3), dtype=dt)(x)
    skips = [h]
    levels = len(self.width_multipliers)
    for level, mult in enumerate(self.width_multipliers):
      for _ in range(self.blocks_per_level):
        h = block(h, self.base_width * mult)
        skips.append(h)
      if level < levels - 1:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = nn.Conv(h.shape[-1], (3, 3), dtype=dt)(h)
        skips.append(h)

    h = ResnetBlock(h.shape[-1], self.dropout, dt)(h, emb, train)
    h = AttentionBlock(dt)(h)
    h = ResnetBlock(h.shape[-1], self.dropout, dt)(h, emb, train)

    for level, mult in reversed(list(enumerate(self.width_multipliers))):
      for _ in range(self.blocks_per_level + 1):
        h = block(jnp.concatenate([h, skips.pop()], -1), self.base_width * mult)
      if level > 0:
        h = nn.Conv(h.shape[-1], (3, 3), dtype=dt)(h)
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    assert not skips
    h = nn.swish(_group_norm(h.shape[-1], dt)(h))
    out = at_least_float32(nn.Conv(x.shape[-1], (3, 3),
                                   kernel_init=nn.initializers.zeros, dtype=dt)(h))
    return depth_to_space(out, self.patch_size) if self.patch_size > 1 else out
