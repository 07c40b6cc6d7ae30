"""Normalizing-flow layers and the multi-scale flow (RealNVP, Glow).

Every layer is a bijection with two modes of one `__call__`:

    layer(x)                -> (y, logdet_B)   # log |det dy/dx| per example
    layer(y, reverse=True)  -> x

Parameters are created by the forward pass (`init` always runs forward), which
is what lets ActNorm initialise itself from the data it first sees. Layers hold
no losses: the objective is in jaxgen/models/flow.py.

The multi-scale flow maps an image y to a standard-normal vector eps of the
same size (Dinh et al. 2017, Kingma & Dhariwal 2018): at each level a 2x2
squeeze, a stack of steps, then half the channels are factored out. A factored
half z is standardised by a learned Gaussian conditioned on the kept half
(Glow's split prior), eps = (z - mean) / std, whose -sum(log std) enters the
log-determinant; so log p(y) = log N(eps; 0, I) + logdet, and sampling is
inverse(eps ~ N(0, T^2 I)).

A compute `dtype` (bfloat16) reaches only the networks that compute a
coupling's shift and scale and a split prior's mean and std; their outputs come
back in float32 and the bijections themselves (actnorm, 1x1 convolutions, the
affine maps, log-determinants) stay float32. The inverse recomputes those
networks from the same conditioning half, bit for bit, so the flow stays
exactly invertible and its log-determinant exact for the function it computes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets import Conv, at_least_float32
from jaxgen.nets.conv import depth_to_space, space_to_depth

# Glow's coupling scale sigmoid(h + 2): starts near 0.88 (close to identity with
# the zero-initialised last conv) and can never blow up, unlike exp(h).
_SCALE_OFFSET = 2.0


class ActNorm(nn.Module):
  """y = (x + bias) * exp(log_scale) per channel. Data-dependent init: the
  first batch seen comes out with zero mean and unit variance per channel."""

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, reverse: bool = False):
    bias = self.param("bias", lambda _: -jnp.mean(x_BHWC, axis=(0, 1, 2)))
    log_scale = self.param(
        "log_scale", lambda _: -jnp.log(jnp.std(x_BHWC, axis=(0, 1, 2)) + 1e-6))
    if reverse:
      return x_BHWC * jnp.exp(-log_scale) - bias
    y = (x_BHWC + bias) * jnp.exp(log_scale)
    height, width = x_BHWC.shape[1:3]
    logdet = height * width * jnp.sum(log_scale)
    return y, jnp.full(x_BHWC.shape[:1], logdet)


class Invertible1x1Conv(nn.Module):
  """y = W x at every pixel (Glow), W initialised to a random rotation.

  With `lu`, W = P L (U + diag(sign(s) exp(log|s|))), P and sign(s) fixed at
  their initial values: log|det W| is then sum(log|s|), O(C) instead of O(C^3).
  The fixed P and sign(s) are stored with the parameters (so a checkpoint holds
  them) and receive no gradient.
  """
  lu: bool = True

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, reverse: bool = False):
    c = x_BHWC.shape[-1]
    # One random rotation behind all of W's parts. Flax also calls the init
    # functions when applying (under eval_shape, to check shapes), where any
    # key will do.
    key = (self.make_rng("params") if self.is_initializing()
           else jax.random.PRNGKey(0))
    rotation = lambda: jnp.linalg.qr(jax.random.normal(key, (c, c)))[0]
    if self.lu:
      def lu_part(name):
        p, l, u = jax.scipy.linalg.lu(rotation())
        s = jnp.diag(u)
        return {"p": p, "l": l, "u": jnp.triu(u, 1), "sign_s": jnp.sign(s),
                "log_abs_s": jnp.log(jnp.abs(s))}[name]
      param = lambda name: self.param(name, lambda _: lu_part(name))
      p = jax.lax.stop_gradient(param("p"))
      sign_s = jax.lax.stop_gradient(param("sign_s"))
      l = jnp.tril(param("l"), -1) + jnp.eye(c)
      log_abs_s = param("log_abs_s")
      u = jnp.triu(param("u"), 1) + jnp.diag(sign_s * jnp.exp(log_abs_s))
      w = p @ l @ u
      log_abs_det = jnp.sum(log_abs_s)
    else:
      w = self.param("kernel", lambda _: rotation())
      log_abs_det = jnp.linalg.slogdet(w)[1]
    if reverse:
      return x_BHWC @ jnp.linalg.inv(w).T
    height, width = x_BHWC.shape[1:3]
    return x_BHWC @ w.T, jnp.full(x_BHWC.shape[:1], height * width * log_abs_det)


class CouplingNet(nn.Module):
  """conv3x3 - relu - conv1x1 - relu - conv3x3 (zero-initialised), the
  network of Glow's coupling: it starts as the identity's shift and scale."""
  width: int
  out_channels: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = nn.relu(Conv(self.width, (3, 3), dtype=self.dtype)(x_BHWC))
    h = nn.relu(Conv(self.width, (1, 1), dtype=self.dtype)(h))
    h = Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros,
             dtype=self.dtype)(h)
    return at_least_float32(h)


def checkerboard(height: int, width: int, parity: int) -> jax.Array:
  """[H, W, 1] of 1s where (i + j + parity) is even: the pixels that condition."""
  i, j = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return ((i + j + parity) % 2 == 0).astype(jnp.float32)[..., None]


class AffineCoupling(nn.Module):
  """Half the input passes unchanged and sets shift t and scale s of the rest:
  y_b = (x_b + t(x_a)) * s(x_a), log|det| = sum log s over the changed half.

  mask "channel": halves are channel halves (parity 1 swaps them);
  "checkerboard": halves are the two colours of a spatial checkerboard
  (RealNVP), the network seeing the masked input and the mask itself.
  """
  width: int
  mask: str = "channel"
  parity: int = 0
  dtype: Any = None

  def _shift_and_scale(self, x_cond: jax.Array, out_channels: int):
    h = CouplingNet(self.width, 2 * out_channels, self.dtype)(x_cond)
    shift, raw_scale = jnp.split(h, 2, axis=-1)
    log_scale = jax.nn.log_sigmoid(raw_scale + _SCALE_OFFSET)
    return shift, log_scale

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, reverse: bool = False,
               context_BHWC: jax.Array | None = None):
    """`context` (channel mask only): features of something else the shift and
    scale may depend on (a variational dequantizer's image); the map stays a
    bijection of x for each context."""
    b, h, w, c = x_BHWC.shape
    if context_BHWC is not None and self.mask != "channel":
      raise ValueError("a context is only supported with mask='channel'")
    if self.mask == "checkerboard":
      keep = checkerboard(h, w, self.parity)
      cond = jnp.concatenate([x_BHWC * keep, jnp.broadcast_to(keep, (b, h, w, 1))], -1)
      shift, log_scale = self._shift_and_scale(cond, c)
      change = 1.0 - keep
      if reverse:
        return x_BHWC * keep + change * (x_BHWC * jnp.exp(-log_scale) - shift)
      y = x_BHWC * keep + change * ((x_BHWC + shift) * jnp.exp(log_scale))
      return y, jnp.sum(change * log_scale, axis=(1, 2, 3))
    if c < 2:
      raise ValueError(f"a channel coupling needs at least 2 channels, got {c}: "
                       "squeeze first or use mask='checkerboard'")
    first, second = x_BHWC[..., :c // 2], x_BHWC[..., c // 2:]
    x_a, x_b = (second, first) if self.parity else (first, second)
    x_cond = (x_a if context_BHWC is None
              else jnp.concatenate([x_a, context_BHWC.astype(x_a.dtype)], -1))
    shift, log_scale = self._shift_and_scale(x_cond, x_b.shape[-1])
    if reverse:
      y_b = x_b * jnp.exp(-log_scale) - shift
    else:
      y_b = (x_b + shift) * jnp.exp(log_scale)
    y = jnp.concatenate([y_b, x_a] if self.parity else [x_a, y_b], -1)
    if reverse:
      return y
    return y, jnp.sum(log_scale, axis=(1, 2, 3))


class SplitPrior(nn.Module):
  """Factors out the second channel half z as eps = (z - mean) / std, mean and
  log std from a zero-initialised conv of the kept half (starts as N(0, I))."""
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, reverse: bool = False,
               eps_BHWC: jax.Array | None = None):
    """Forward: x -> (kept, eps, logdet). Reverse: (kept, eps) -> x."""
    c = x_BHWC.shape[-1] if not reverse else 2 * x_BHWC.shape[-1]
    kept = x_BHWC[..., :c // 2]
    h = at_least_float32(Conv(c, (3, 3), kernel_init=nn.initializers.zeros,
                              dtype=self.dtype)(kept))
    mean, log_std = jnp.split(h, 2, axis=-1)
    if reverse:
      return jnp.concatenate([kept, mean + jnp.exp(log_std) * eps_BHWC], -1)
    z = x_BHWC[..., c // 2:]
    eps = (z - mean) * jnp.exp(-log_std)
    return kept, eps, -jnp.sum(log_std, axis=(1, 2, 3))


class VariationalDequantizer(nn.Module):
  """q(n | x), a density on the dequantization noise n in (0, 1)^D of an image
  x (Ho et al. 2019, Flow++): n = sigmoid(g(eps; x)), eps ~ N(0, I), g a
  conditional Glow on the 2x2-squeezed noise whose couplings also see
  features of x. Returns n and log q(n | x) per image,

      log q = log N(eps; 0, I) - log |det dg/d eps| - sum log sigmoid'(g),

  so -log p(x + n) + log q(n | x) bounds -log P(x) for any q; training q
  tightens it where the uniform q (log q = 0) leaves the flow to model the
  flat boxes of its noise.
  """
  steps: int = 4
  width: int = 32
  lu: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, image_BHWC: jax.Array, eps_BHWC: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """image (pixels scaled to about [-0.5, 0.5]), eps -> (n, log q(n | x))."""
    relu_conv = lambda h: nn.relu(Conv(self.width, (3, 3), dtype=self.dtype)(h))
    context = at_least_float32(relu_conv(relu_conv(space_to_depth(image_BHWC, 2))))
    h = space_to_depth(eps_BHWC, 2)
    logdet = jnp.zeros(eps_BHWC.shape[:1])
    for k in range(self.steps):
      h, step_logdet = ActNorm()(h)
      logdet += step_logdet
      h, step_logdet = Invertible1x1Conv(lu=self.lu)(h)
      logdet += step_logdet
      h, step_logdet = AffineCoupling(self.width, "channel", parity=k % 2,
                                      dtype=self.dtype)(h, context_BHWC=context)
      logdet += step_logdet
    h = depth_to_space(h, 2)
    log_normal = -0.5 * jnp.sum(eps_BHWC ** 2 + math.log(2 * math.pi), (1, 2, 3))
    log_sigmoid_slope = jnp.sum(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h),
                                (1, 2, 3))
    return jax.nn.sigmoid(h), log_normal - logdet - log_sigmoid_slope


class _GlowStep(nn.Module):
  """One Glow step, actnorm -> 1x1 conv -> channel coupling, as the body of
  GlowSteps' scan: carry (x, logdet) forward, x in reverse."""
  width: int
  lu: bool
  dtype: Any
  reverse: bool

  @nn.compact
  def __call__(self, carry, _):
    # Named, so the reverse pass (which calls them in the other order) finds
    # the parameters the forward pass made.
    actnorm = ActNorm(name="actnorm")
    conv = Invertible1x1Conv(lu=self.lu, name="conv1x1")
    coupling = AffineCoupling(self.width, "channel", dtype=self.dtype, name="coupling")
    if self.reverse:
      return actnorm(conv(coupling(carry, reverse=True), reverse=True), reverse=True), None
    x, logdet = carry
    for layer in (actnorm, conv, coupling):
      x, layer_logdet = layer(x)
      logdet = logdet + layer_logdet
    return (x, logdet), None


class GlowSteps(nn.Module):
  """K Glow steps as one `lax.scan` over stacked parameters: the same
  function as K unrolled steps, compiled once instead of K times (minutes
  saved for the published K = 32 x 3 levels). Actnorm's data-dependent init
  still sees each step's own input: init runs the scan forward."""
  steps: int
  width: int
  lu: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, reverse: bool = False):
    scan = nn.scan(_GlowStep, variable_axes={"params": 0},
                   split_rngs={"params": True}, length=self.steps, reverse=reverse)
    body = scan(self.width, self.lu, self.dtype, reverse, name="steps")
    if reverse:
      return body(x_BHWC, None)[0]
    (y, logdet), _ = body((x_BHWC, jnp.zeros(x_BHWC.shape[:1])), None)
    return y, logdet


@dataclasses.dataclass(frozen=True)
class Op:
  """One entry of a flow's plan: a layer (by index), a squeeze, or a split."""
  kind: str          # "layer" | "squeeze" | "split"
  index: int = -1    # into MultiScaleFlow's layers or splits


def flow_plan(architecture: str, num_levels: int, steps_per_level: int,
              lu: bool, width: int, dtype: Any = None, scan_steps: bool = False
              ) -> tuple[list[Op], list[nn.Module], int]:
  """The order of operations, the layers to build, and the number of splits.

  glow:    per level: squeeze, K x [actnorm, 1x1 conv, channel coupling],
           split (all but the last level); with scan_steps the K steps are
           one GlowSteps layer (a scan, same function, other param layout).
  realnvp: per level: K x [actnorm, checkerboard coupling], squeeze,
           K x [actnorm, channel coupling], split; the last level only the
           checkerboard couplings (Dinh et al. 2017; actnorm in place of
           their batch norm, so a step does not depend on the batch).
  """
  if scan_steps and architecture != "glow":
    raise ValueError("scan_steps is for glow, whose steps are alike; "
                     f"{architecture} alternates its masks")
  ops: list[Op] = []
  layers: list[nn.Module] = []
  num_splits = 0

  def add(layer: nn.Module) -> None:
    ops.append(Op("layer", len(layers)))
    layers.append(layer)

  for level in range(num_levels):
    last = level == num_levels - 1
    if architecture == "glow":
      ops.append(Op("squeeze"))
      if scan_steps:
        add(GlowSteps(steps_per_level, width, lu, dtype))
      else:
        for _ in range(steps_per_level):
          add(ActNorm())
          add(Invertible1x1Conv(lu=lu))
          add(AffineCoupling(width, "channel", dtype=dtype))
    elif architecture == "realnvp":
      for k in range(steps_per_level + (1 if last else 0)):
        add(ActNorm())
        add(AffineCoupling(width, "checkerboard", parity=k % 2, dtype=dtype))
      if last:
        break
      ops.append(Op("squeeze"))
      for k in range(steps_per_level):
        add(ActNorm())
        add(AffineCoupling(width, "channel", parity=k % 2, dtype=dtype))
    else:
      raise ValueError(f"unknown flow architecture {architecture!r}: "
                       "use 'glow' or 'realnvp'")
    if not last:
      ops.append(Op("split", num_splits))
      num_splits += 1
  return ops, layers, num_splits


def latent_shapes(ops: Sequence[Op], image_shape: tuple[int, int, int]
                  ) -> list[tuple[int, int, int]]:
  """Shapes of eps's parts, in the order forward() emits them (each split's
  factored half, then the final output)."""
  h, w, c = image_shape
  shapes = []
  for op in ops:
    if op.kind == "squeeze":
      if h % 2 or w % 2:
        raise ValueError(f"cannot squeeze a {h}x{w} map: fewer levels, please")
      h, w, c = h // 2, w // 2, c * 4
    elif op.kind == "split":
      shapes.append((h, w, c - c // 2))
      c = c // 2
  shapes.append((h, w, c))
  return shapes


class MultiScaleFlow(nn.Module):
  """A bijection between images y [B, H, W, C] and eps [B, H*W*C]."""
  image_shape: tuple[int, int, int]
  architecture: str = "glow"
  num_levels: int = 2
  steps_per_level: int = 8
  width: int = 128
  lu: bool = True
  dtype: Any = None   # compute dtype of the coupling and split-prior networks
  scan_steps: bool = False   # glow: each level's steps as one scan (GlowSteps)

  def setup(self):
    ops, layers, num_splits = flow_plan(self.architecture, self.num_levels,
                                        self.steps_per_level, self.lu, self.width,
                                        self.dtype, self.scan_steps)
    self.ops = ops
    self.layers = layers
    self.splits = [SplitPrior(self.dtype) for _ in range(num_splits)]
    self.shapes = latent_shapes(ops, self.image_shape)

  def forward(self, y_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """y -> (eps [B, D], log |det d eps / d y| [B])."""
    x = y_BHWC
    logdet = jnp.zeros(y_BHWC.shape[:1])
    parts = []
    for op in self.ops:
      if op.kind == "squeeze":
        x = space_to_depth(x, 2)
      elif op.kind == "split":
        x, eps, split_logdet = self.splits[op.index](x)
        parts.append(eps.reshape(eps.shape[0], -1))
        logdet += split_logdet
      else:
        x, layer_logdet = self.layers[op.index](x)
        logdet += layer_logdet
    parts.append(x.reshape(x.shape[0], -1))
    return jnp.concatenate(parts, -1), logdet

  def inverse(self, eps_BD: jax.Array) -> jax.Array:
    """eps [B, D] -> y [B, H, W, C]."""
    b = eps_BD.shape[0]
    sizes = [math.prod(s) for s in self.shapes]
    offsets = [0]
    for size in sizes:
      offsets.append(offsets[-1] + size)
    part = lambda i: eps_BD[:, offsets[i]:offsets[i + 1]].reshape(b, *self.shapes[i])
    x = part(len(self.shapes) - 1)
    for op in reversed(self.ops):
      if op.kind == "squeeze":
        x = depth_to_space(x, 2)
      elif op.kind == "split":
        x = self.splits[op.index](x, reverse=True, eps_BHWC=part(op.index))
      else:
        x = self.layers[op.index](x, reverse=True)
    return x

  def __call__(self, y_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.forward(y_BHWC)
