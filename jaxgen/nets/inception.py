"""The InceptionV3 of FID (pytorch-fid's `fid_inception_v3`), in Flax, NHWC.

This is the network of TensorFlow's 2015-12-05 Inception graph that the
original FID and Inception Score code use, as ported by pytorch-fid
(src/pytorch_fid/inception.py), which builds torchvision's Inception3 and
patches it where the TF graph differs:
  * Mixed_5b..5d, 6b..6e, 7b: the 3x3 average pool of the pool branch ignores
    the zero padding (count_include_pad=False), as TF's average pool does;
  * Mixed_7c: that pool is a 3x3 MAX pool (stride 1, pad 1), a quirk of the
    TF graph that FID numbers depend on;
  * 1008 logits (index 0 is TF's "background" class), no auxiliary head.

Module and parameter names follow the torch state dict (`Mixed_5b.branch1x1
.conv.weight` is params["Mixed_5b"]["branch1x1"]["conv"]["kernel"]), so the
weight loader in jaxgen/evaluate/inception.py maps names one to one.

Inference only: BatchNorm is the affine map given by its stored running
statistics (eps 1e-3, torchvision's BasicConv2d), and those statistics live in
the "params" collection next to scale and bias, so the whole network is one
frozen pytree.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INPUT_SIZE = 299
NUM_FEATURES = 2048   # pool3: global average of Mixed_7c
NUM_LOGITS = 1008
BN_EPS = 1e-3

# FID is sensitive to small feature changes, and on accelerators the default
# float32 conv precision may be bf16/TF32; the reference runs in float32.
DEFAULT_PRECISION = jax.lax.Precision.HIGHEST

Pair = tuple[int, int]


def _pair(v: int | Sequence[int]) -> Pair:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def preprocess(images_BHWC: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Images in [0, 1], any size, 1 or 3 channels -> [B, 299, 299, 3] in [-1, 1].

  pytorch-fid's InceptionV3.forward: F.interpolate(bilinear,
  align_corners=False), then 2x - 1. jax.image.resize without antialiasing
  samples at the same half-pixel centres and clamps at the border the same
  way (benchmarks/inception_torch_reference.py checks both up- and
  down-sampling against torch).
  """
  x = jnp.asarray(images_BHWC, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected images [B, H, W, 1 or 3], got shape {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  b, h, w, c = x.shape
  if (h, w) != (size, size):
    x = jax.image.resize(x, (b, size, size, c), "bilinear", antialias=False)
  return 2.0 * x - 1.0


class FrozenBatchNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) * scale + bias with stored statistics."""
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    mul = scale * jax.lax.rsqrt(var + self.eps)
    return x * mul + (bias - mean * mul)


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv without bias, BatchNorm, ReLU.

  `padding` is torch's symmetric (ph, pw) zero padding.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=self.precision, name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  # TF's average pool: padded zeros do not count towards the mean.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (FIDInceptionA): 64 + 64 + 96 + pool_features channels."""
  pool_features: int
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, 1, name="branch1x1")(x)
    b5 = conv(48, 1, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, name="branch_pool")(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: stride-2 reduction, 384 + 96 + C_in channels."""
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, 1, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (FIDInceptionC): factorized 7x7 convs, 4 x 192 channels."""
  channels_7x7: int
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x)
    b7 = conv(c7, 1, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, 1, name="branch_pool")(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: stride-2 reduction, 320 + 192 + C_in channels."""
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, 1, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, 1, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (avg pool, FIDInceptionE_1) and Mixed_7c (max pool, _2).

  320 + (384 + 384) + (384 + 384) + 192 = 2048 channels.
  """
  pool: str  # "avg" or "max"
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, 1, name="branch1x1")(x)
    b3 = conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = avg_pool_3x3_same(x)
    elif self.pool == "max":
      pooled = max_pool_3x3_same(x)
    else:
      raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {self.pool!r}")
    bp = conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Preprocessed images [B, H, W, 3] in [-1, 1] -> (pool3 [B, 2048], logits [B, 1008]).

  Resize and scaling are `preprocess`'s job; the network itself is fully
  convolutional up to the global average pool, as in pytorch-fid.
  """
  num_logits: int = NUM_LOGITS
  precision: Any = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = self.precision
    x = BasicConv2d(32, 3, strides=2, precision=p, name="Conv2d_1a_3x3")(x_BHWC)
    x = BasicConv2d(32, 3, precision=p, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, precision=p, name="Conv2d_2b_3x3")(x)
    x = max_pool_3x3_s2(x)
    x = BasicConv2d(80, 1, precision=p, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, precision=p, name="Conv2d_4a_3x3")(x)
    x = max_pool_3x3_s2(x)
    x = InceptionA(32, precision=p, name="Mixed_5b")(x)
    x = InceptionA(64, precision=p, name="Mixed_5c")(x)
    x = InceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    x = InceptionC(128, precision=p, name="Mixed_6b")(x)
    x = InceptionC(160, precision=p, name="Mixed_6c")(x)
    x = InceptionC(160, precision=p, name="Mixed_6d")(x)
    x = InceptionC(192, precision=p, name="Mixed_6e")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = InceptionE("avg", precision=p, name="Mixed_7b")(x)
    x = InceptionE("max", precision=p, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    # torchvision applies dropout before fc; a no-op at inference.
    logits = nn.Dense(self.num_logits, precision=p, name="fc")(pool3)
    return pool3, logits
