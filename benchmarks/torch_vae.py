"""The PyTorch twin of jaxgen's autoencoders (configs/ae_mnist.py, vae_mnist.py,
cvae_mnist.py, vae_cifar10.py, cvae_cifar10.py, and the local autoregressive
decoders vae_mnist.py:ar, vae_cifar10.py:ar), built from the jaxgen config
object.

The same networks (jaxgen/nets/conv.py: [x, one-hot label] * 2 - 1 -> strided
3x3 convs with Flax's "SAME" padding -> dense -> code, or for a latent map
(`model.latent_channels`) a last 3x3 conv to a map at the coarsest
resolution; [z, one-hot label] -> two dense layers, or for a map a 3x3 conv
on z with the label as constant channels -> sub-pixel upsampling stages ->
the likelihood's parameters; ReLU; optional residual blocks; LeCun-normal
weights, zero biases; with `model.ar_context` = k the decoder emits
`ar_hidden` features and jaxgen/nets/autoregressive.py's LocalARHead turns
them into the likelihood's parameters: a k x k type-A masked convolution of
the image in [-1, 1], its bias and the features summed, ReLU, two pointwise
layers, read in one teacher-forced pass), the same loss (Bernoulli, fixed-std Gaussian or
jaxgen/likelihoods.py's discretized logistic mixture with coupled colour
channels, summed over pixels, plus beta * the free-bits KL with the linear
warm-up for the VAE; reconstruction alone for the AE; mean over the batch;
bits/dim metrics for the mixture), the same data noise (dynamic binarization
drawn each step, one posterior sample per image) and the same optimizer
(jaxgen/optim.py: Adam, AdamW or SGD with the config's lr, betas, eps, weight
decay, global-norm clipping, and its warm-up + cosine schedule as a
LambdaLR). sample() is jaxgen's: decoder means E[x | z] of prior draws (for
the mixture, the coupled component means weighted by the mixture weights),
or with the AR head draws from p(x | z) pixel by pixel in raster order
(decode_sequential's loop as a PyTorch user writes it: one eager step per
pixel, each on that pixel's k x k window of the canvas).
Tensors are NCHW; a latent map is [B, C, h, w] (jaxgen flattens it NHWC).
A bfloat16 `model.compute_dtype` is refused (the twin computes in its own
dtype, float32 for speed.py, float64 for the check; speed.py then times
jaxgen alone).

The equivalence check (`check`, below) copies jaxgen's initial params into the
twin, gives it the binarized pixels and posterior noise that jaxgen's
train_step draws from its key, and compares, for `--steps` train steps of one
batch, both sides in float64: the learning-rate schedule, the loss and
metrics, the gradients of the loss (jax.grad through jaxgen's own
train_step), and the params after the steps. Each prints its max abs and
relative difference and must stay under `--tol` (1e-4). With the AR head it
also compares the pixel-by-pixel samplers (check_ar_sampler: the two raster
loops on the same features, under `--tol`, and the two pixel samplers' draws
in distribution):

    python benchmarks/torch_vae.py check                       # all 7 configs
    python benchmarks/torch_vae.py check --config=vae_cifar10:smoke,cvae_cifar10:smoke
    python benchmarks/torch_vae.py check --config=vae_mnist
    python benchmarks/torch_vae.py check --config=cvae_mnist --set model.res_blocks=1
    python benchmarks/torch_vae.py check --config=vae_cifar10:smoke --set model.free_nats=0.25
    python benchmarks/torch_vae.py check --config=vae_mnist:ar,vae_cifar10:ar
    python benchmarks/torch_vae.py check --dtype=float32 --steps=1 --tol=1    # look only

8-bit pixels (the CIFAR-10 configs): jaxgen's are float32 even under x64,
and XLA decides their rounding: in jaxgen's step it folds u8 / 255 * 2 - 1
into one multiply-add, u8 * f32(2/255) - 1 rounded once (an FMA on CPU),
except where the label channels come between (cvae's encoder input), which
is rounded twice. These differ from u8 / 255 in float64 (or PyTorch's float32
rounding) by up to 1.2e-7 in a [-1, 1] pixel, which moved the loss by 1e-7
relative and params by 1e-6 after 3 steps; so the check hands the twin the
[-1, 1] pixels of each path as jaxgen's step computes them (a jitted copy of
its pixel code with the images as an argument: as a constant, XLA folds them
with IEEE division instead), and the two sides then agree to float64
rounding.

benchmarks/speed.py times the twin's train step against jaxgen's.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # jaxgen and configs/, for the check
# How a twin layer's tensors are laid out relative to Flax's (see to_torch).
CONV, CONV_TO_SHUFFLE, DENSE, DENSE_FROM_MAP, DENSE_TO_MAP, POINTWISE = (
    "conv", "conv_to_shuffle", "dense", "dense_from_map", "dense_to_map",
    "pointwise")


def require_float32(config: Any) -> None:
  """The twins compute in float32 only; jaxgen's bfloat16 switch
  (`model.compute_dtype`) has no twin."""
  dtype = config.model.get("compute_dtype", "float32")
  if dtype != "float32":
    raise ValueError(f"model.compute_dtype={dtype!r}: the twin computes in "
                     "float32 only")


def require_supported(config: Any) -> None:
  """Raises ValueError for autoencoder settings the twin does not build."""
  require_float32(config)
  m = config.model
  if m.family not in ("ae", "vae"):
    raise ValueError(f"model.family={m.family!r}: the twin covers 'ae' and 'vae'")
  if m.likelihood not in ("bernoulli", "gaussian", "discretized_logistic"):
    raise ValueError(f"model.likelihood={m.likelihood!r}: the twin has "
                     "'bernoulli', 'gaussian' and 'discretized_logistic'")


def flax_init_(module: nn.Module) -> None:
  """Flax's defaults: LeCun-normal kernels (a normal truncated at 2 std, scaled
  to variance 1 / fan_in) and zero biases."""
  if isinstance(module, (nn.Conv2d, nn.Linear)):
    fan_in = module.weight[0].numel()
    # 0.8796... is the std of a unit normal truncated to [-2, 2].
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(module.weight, 0.0, std, -2 * std, 2 * std)
    nn.init.zeros_(module.bias)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's "SAME" padding (before, after) of one spatial dimension."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
  """A conv with Flax's "SAME" padding. A strided 3x3 conv on an even size
  pads 0 before and 1 after; PyTorch's symmetric padding=1 would shift every
  output by a pixel, so that case pads explicitly."""

  def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
    super().__init__(in_channels, out_channels, 3, stride=stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (top, bottom), (left, right) = (same_pads(n, 3, self.stride[0])
                                    for n in x.shape[2:])
    if top == bottom and left == right:
      return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
    return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight,
                    self.bias, self.stride)


class ResBlock(nn.Module):
  """x + conv(relu(conv(relu(x)))), as jaxgen/nets/conv.py's ResBlock."""

  def __init__(self, width: int):
    super().__init__()
    self.conv0 = SameConv2d(width, width)
    self.conv1 = SameConv2d(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class _FlaxNamed(nn.Module):
  """Records, for each layer, its Flax param path and layout, numbering
  layers per type in creation order as Flax's compact modules do."""

  def __init__(self):
    super().__init__()
    self.flax_layout: dict[str, tuple[nn.Module, str, tuple[int, ...]]] = {}
    self._counts: dict[str, int] = {}

  def _name(self, kind: str, module: nn.Module, layout: str = "",
            shape: tuple[int, ...] = ()) -> nn.Module:
    index = self._counts.get(kind, 0)
    self._counts[kind] = index + 1
    name = f"{kind}_{index}"
    if isinstance(module, ResBlock):
      self.flax_layout[f"{name}/Conv_0"] = (module.conv0, CONV, ())
      self.flax_layout[f"{name}/Conv_1"] = (module.conv1, CONV, ())
    else:
      self.flax_layout[name] = (module, layout, shape)
    return module


class Encoder(_FlaxNamed):
  """jaxgen's ConvEncoder: images in [0, 1] -> num_outputs features (vector
  code), or with `spatial` a [num_outputs, h, w] map at the coarsest
  resolution from a last 3x3 conv (a latent map)."""

  def __init__(self, image_hw: tuple[int, int], in_channels: int,
               widths: tuple[int, ...], hidden: int, num_outputs: int,
               res_blocks: int, spatial: bool = False):
    super().__init__()
    layers, prev = [], in_channels
    for width in widths:
      layers += [self._name("Conv", SameConv2d(prev, width, stride=2), CONV),
                 nn.ReLU()]
      layers += [self._name("ResBlock", ResBlock(width)) for _ in range(res_blocks)]
      prev = width
    if spatial:
      if res_blocks:  # a residual block ends on its sum, not a ReLU
        layers.append(nn.ReLU())
      layers.append(self._name("Conv", SameConv2d(prev, num_outputs), CONV))
    else:
      h, w = image_hw
      for _ in widths:
        h, w = -(-h // 2), -(-w // 2)
      layers += [nn.Flatten(),
                 self._name("Dense", nn.Linear(prev * h * w, hidden),
                            DENSE_FROM_MAP, (h, w, prev)),
                 nn.ReLU(),
                 self._name("Dense", nn.Linear(hidden, num_outputs), DENSE)]
    self.layers = nn.Sequential(*layers)
    self.apply(flax_init_)

  def forward(self, x01_BCHW: torch.Tensor) -> torch.Tensor:
    # In the pixels' dtype, then the params': float32 pixels, as jaxgen's, in
    # training; the float64 check hands in float64 ones (see check).
    x = x01_BCHW * 2.0 - 1.0
    return self.layers(x.to(self.layers[0].weight.dtype))


class Decoder(_FlaxNamed):
  """jaxgen's ConvDecoder: [z, cond] -> per-pixel outputs, upsampled by 3x3
  convs to 4x the channels + PixelShuffle(2). z is a vector of in_features
  (two dense layers to the coarse map), or with `latent_map` a [in_features,
  h, w] map at the coarse resolution (a 3x3 conv instead)."""

  def __init__(self, image_shape: tuple[int, int, int], in_features: int,
               widths: tuple[int, ...], hidden: int, out_channels: int,
               res_blocks: int, latent_map: bool = False):
    super().__init__()
    height, width, _ = image_shape
    factor = 2 ** len(widths)
    if height % factor or width % factor:
      raise ValueError(f"image {height}x{width} is not divisible by {factor}")
    coarse = (widths[0], height // factor, width // factor)
    if latent_map:
      layers = [self._name("Conv", SameConv2d(in_features, widths[0]), CONV),
                nn.ReLU()]
    else:
      layers = [self._name("Dense", nn.Linear(in_features, hidden), DENSE), nn.ReLU(),
                self._name("Dense", nn.Linear(hidden, int(np.prod(coarse))),
                           DENSE_TO_MAP, (coarse[1], coarse[2], coarse[0])),
                nn.ReLU(), nn.Unflatten(1, coarse)]
    layers += [self._name("ResBlock", ResBlock(widths[0])) for _ in range(res_blocks)]
    for prev, stage in zip(widths[:-1], widths[1:]):
      layers += [self._name("Conv", SameConv2d(prev, 4 * stage), CONV_TO_SHUFFLE),
                 nn.PixelShuffle(2), nn.ReLU(),
                 self._name("Conv", SameConv2d(stage, stage), CONV), nn.ReLU()]
      layers += [self._name("ResBlock", ResBlock(stage)) for _ in range(res_blocks)]
    if res_blocks:
      layers.append(nn.ReLU())
    layers += [self._name("Conv", SameConv2d(widths[-1], 4 * out_channels),
                          CONV_TO_SHUFFLE), nn.PixelShuffle(2)]
    self.layers = nn.Sequential(*layers)
    self.apply(flax_init_)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    return self.layers(z)


def causal_mask(context: int, in_channels: int, out_channels: int) -> torch.Tensor:
  """autoregressive.causal_mask in OIHW: 1 on the rows above the centre and
  left of it in the centre row."""
  mask = torch.zeros(out_channels, in_channels, context, context)
  centre = context // 2
  mask[..., :centre, :] = 1.0
  mask[..., centre, :centre] = 1.0
  return mask


class LocalARHead(nn.Module):
  """jaxgen's LocalARHead: decoder features [B, F, H, W] and the image in
  [0, 1] -> the likelihood's parameters [B, P, H, W]. Its Dense layers act on
  each pixel's features, which on NCHW are 1x1 convolutions."""

  def __init__(self, context: int, channels: int, hidden: int, out_channels: int):
    super().__init__()
    self.window = nn.Conv2d(channels, hidden, context, padding=context // 2)
    self.mix = nn.Conv2d(hidden, hidden, 1)
    self.out = nn.Conv2d(hidden, out_channels, 1)
    self.register_buffer("mask", causal_mask(context, channels, hidden))
    self.apply(flax_init_)
    self.flax_layout = {"window": (self.window, CONV, ()),
                        "mix": (self.mix, POINTWISE, ()),
                        "out": (self.out, POINTWISE, ())}

  def forward(self, features_BFHW: torch.Tensor, x01_BCHW: torch.Tensor
              ) -> torch.Tensor:
    w = self.window
    x = (x01_BCHW * 2.0 - 1.0).to(w.weight.dtype)
    pre = F.conv2d(x, w.weight * self.mask, w.bias, padding=w.padding)
    return self.out(F.relu(self.mix(F.relu(pre + features_BFHW))))

  def decode_sequential(self, features_BFHW: torch.Tensor,
                        pixel_value: Callable[[torch.Tensor], torch.Tensor]
                        ) -> torch.Tensor:
    """autoregressive.decode_sequential: pixels in raster order, each drawn by
    pixel_value(params [B, P, 1, 1]) -> [B, C, 1, 1] in [0, 1] from its
    window of the canvas, whose border reads 0 on [-1, 1]."""
    b, _, height, width = features_BFHW.shape
    k = self.window.kernel_size[0]
    pad = k // 2
    channels = self.mask.shape[1]
    canvas = features_BFHW.new_full((b, channels, height + 2 * pad, width + 2 * pad), 0.5)
    # The head's layers as matrices on one pixel's [B, ...] vectors.
    kernel = (self.window.weight * self.mask).flatten(1)
    mix, out = self.mix.weight.flatten(1), self.out.weight.flatten(1)
    for row in range(height):
      for col in range(width):
        window = canvas[:, :, row:row + k, col:col + k].flatten(1) * 2.0 - 1.0
        h = F.relu(F.linear(window, kernel, self.window.bias)
                   + features_BFHW[:, :, row, col])
        params = F.linear(F.relu(F.linear(h, mix, self.mix.bias)), out, self.out.bias)
        canvas[:, :, row + pad, col + pad] = pixel_value(params[:, :, None, None])[:, :, 0, 0]
    return canvas[:, :, pad:pad + height, pad:pad + width]


class FlaxBatchNorm2d(nn.BatchNorm2d):
  """Flax's nn.BatchNorm (epsilon 1e-5) in NCHW on torch's fused kernel.

  Training mode normalizes by the batch's biased variance, as both do, and
  keeps running statistics as Flax does: r = m r + (1 - m) batch, with the
  *biased* batch variance, where torch folds in the unbiased one; the torch
  kernel's update is corrected afterwards at the cost of a few C-sized ops.
  `momentum` is Flax's (0.9 = torch's 0.1; 0 stores the batch's statistics,
  jaxgen's standing statistics). `update_stats` False normalizes by the
  batch and keeps the running statistics (jaxgen's D update discards the
  statistics of the G pass that makes its fakes)."""

  def __init__(self, width: int, momentum: float = 0.9):
    super().__init__(width, eps=1e-5, momentum=1.0 - momentum)
    self.update_stats = True

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if not self.training:
      return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                          self.bias, False, 0.0, self.eps)
    if not self.update_stats:
      return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
    # The kernel updates a scratch copy (autograd saves what it is handed, so
    # the buffer itself must not change again before backward).
    running_var = self.running_var.clone()
    y = F.batch_norm(x, self.running_mean, running_var, self.weight,
                     self.bias, True, self.momentum, self.eps)
    with torch.no_grad():
      # It holds (1 - m') r + m' var * n / (n - 1); take m' var / (n - 1) back.
      n = x.numel() // x.shape[1]
      self.running_var.copy_(running_var - (running_var - (1.0 - self.momentum)
                                            * self.running_var) / n)
    return y


def learning_rate(cfg: Any, num_steps: int, step: int) -> float:
  """jaxgen/optim.py's schedule: linear warm-up from 0, then constant or
  cosine decay to final_lr_fraction * peak at the end of training."""
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  if step < warmup:
    return peak * step / warmup
  if cfg.schedule != "cosine":
    return peak
  decay_steps = max(num_steps - warmup, 1)
  t = min(step - warmup, decay_steps)
  alpha = cfg.final_lr_fraction
  return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t / decay_steps)) + alpha)


def config_optimizer(config: Any, params: list[nn.Parameter],
                     schedule_fn: Callable[[int], float] | None = None
                     ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
  """make_optimizer for a whole jaxgen config: its schedule over
  train.num_steps unless the check hands in jaxgen's own rates."""
  if schedule_fn is None:
    schedule_fn = lambda step: learning_rate(config.optimizer,
                                             config.train.num_steps, step)
  return make_optimizer(config.optimizer, params, schedule_fn)


def make_optimizer(cfg: Any, params: list[nn.Parameter],
                   schedule_fn: Callable[[int], float]
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
  """The torch optimizer of jaxgen/optim.py's make_optimizer, with the
  learning rate schedule_fn(step) (clipping is done in the train step, as
  optax chains it before the update)."""
  peak = cfg.learning_rate
  if cfg.name == "sgd":  # optax's trace is torch's momentum without dampening
    opt = torch.optim.SGD(params, peak, momentum=cfg.b1 or 0.0)
  elif cfg.name == "adamw":  # both decay by lr * wd * param, before the update
    opt = torch.optim.AdamW(params, peak, betas=(cfg.b1, cfg.b2), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
  else:
    opt = torch.optim.Adam(params, peak, betas=(cfg.b1, cfg.b2), eps=cfg.eps)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: schedule_fn(step) / peak)
  return opt, schedule


def global_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
  """The global norm of the params' .grad, as optax.global_norm (no host sync)."""
  grads = [p.grad for p in params]
  return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # pylint: disable=protected-access


def clip_and_step(params: list[torch.Tensor], opt: torch.optim.Optimizer,
                  schedule: Any, max_norm: float, grad_norm: torch.Tensor) -> None:
  """jaxgen's update: global-norm clipping (when max_norm > 0), the optimizer
  step, the schedule's step."""
  if max_norm:
    clip_by_global_norm_([p.grad for p in params], max_norm, grad_norm)
  opt.step()
  schedule.step()


def clip_by_global_norm_(grads: list[torch.Tensor], max_norm: float,
                         norm: torch.Tensor) -> None:
  """optax.clip_by_global_norm in place: grads * max_norm / norm when norm >=
  max_norm (torch's clip_grad_norm_ adds 1e-6 to the norm)."""
  scale = torch.where(norm < max_norm, torch.ones_like(norm), max_norm / norm)
  torch._foreach_mul_(grads, scale)  # pylint: disable=protected-access


def bernoulli_nll_nats(logits: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
  x01 = x01.to(logits.dtype)
  return F.binary_cross_entropy_with_logits(logits, x01, reduction="none").sum((1, 2, 3))


def gaussian_nll_nats(mean: torch.Tensor, x01: torch.Tensor, std: float
                      ) -> torch.Tensor:
  z = (x01.to(mean.dtype) - mean) / std
  return (0.5 * z * z + math.log(std) + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))


def gaussian_kl_nats_per_dim(mean: torch.Tensor, logvar: torch.Tensor
                             ) -> torch.Tensor:
  """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent dimension (any shape)."""
  return 0.5 * (logvar.exp() + mean ** 2 - 1.0 - logvar)


def free_bits_kl_nats(kl_B_: torch.Tensor, free_nats: float) -> torch.Tensor:
  """jaxgen's free-bits KL term: each latent dimension's batch-mean KL
  floored at free_nats, summed. The floor is applied at 0 too, as jaxgen
  does: a dimension whose KL rounds below 0 then gets no gradient there either."""
  return torch.clamp(kl_B_.mean(0), min=free_nats).sum()


# jaxgen/likelihoods.py's constants of the discretized logistic mixture.
HALF_BIN = 1.0 / 255.0       # half an 8-bit bin on the [-1, 1] scale
MIN_LOG_SCALE = -7.0


def logistic_mixture_channels(channels: int, k: int) -> int:
  """Per pixel: K logits, C*K means, C*K log-scales, C(C-1)/2*K couplings."""
  return k * (1 + 2 * channels + channels * (channels - 1) // 2)


def softplus(x: torch.Tensor) -> torch.Tensor:
  """jax.nn.softplus, logaddexp(x, 0): torch's F.softplus returns x itself
  above 20, 2e-9 off (and its gradient 1 for sigmoid(x)), which a float64
  check sees wherever a bin edge sits 20 scales out."""
  return torch.logaddexp(x, x.new_zeros(()))


def split_mixture(out_BPHW: torch.Tensor, channels: int, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
  """jaxgen's _split_mixture on NCHW: the P output channels as logits [B, K,
  H, W], means and log-scales (floored) [B, C, K, H, W], tanh'd couplings
  [B, C(C-1)/2, K, H, W]."""
  b, _, h, w = out_BPHW.shape
  ck = channels * k
  logits = out_BPHW[:, :k]
  means = out_BPHW[:, k:k + ck].reshape(b, channels, k, h, w)
  log_scales = out_BPHW[:, k + ck:k + 2 * ck].reshape(b, channels, k, h, w)
  pairs = channels * (channels - 1) // 2
  coeffs = torch.tanh(out_BPHW[:, k + 2 * ck:].reshape(b, pairs, k, h, w))
  return logits, means, torch.clamp(log_scales, min=MIN_LOG_SCALE), coeffs


def couple(bases: list[torch.Tensor], coeffs: torch.Tensor,
           feed: Callable[[int, torch.Tensor], torch.Tensor]
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
  """PixelCNN++'s colour coupling as jaxgen's _couple: channel c is bases[c]
  + coeffs[i] * fed[j] for j < c in order (i counting up over (c, j) pairs),
  fed[j] = feed(j, channel j) (the data for a likelihood, the coupled mean for
  E[x], the clipped draw for a sample). Returns (coupled, fed). The same
  summation order keeps float64 results bit-close."""
  coupled, fed, index = [], [], 0
  for c, value in enumerate(bases):
    for j in range(c):
      value = value + coeffs[:, index] * fed[j]
      index += 1
    coupled.append(value)
    fed.append(feed(c, value))
  return coupled, fed


def logistic_mixture_nll_nats(out_BPHW: torch.Tensor, x01_BCHW: torch.Tensor,
                              k: int) -> torch.Tensor:
  """-log p(x) per image [B] under jaxgen's discretized logistic mixture
  (jaxgen/likelihoods.py: logistic_mixture_log_probs): the same
  parameterisation, edge bins at 0 and 255, clamp, and the same log-space
  form of an inner bin's mass; autograd differentiates it (jaxgen writes
  the gradient out, which gives the same numbers: tests/test_likelihoods.py)."""
  channels = x01_BCHW.shape[1]
  logits, means, log_scales, coeffs = split_mixture(out_BPHW, channels, k)
  # [-1, 1] in the pixels' dtype, then the params', as the encoder does.
  x_C1 = (x01_BCHW * 2.0 - 1.0).to(out_BPHW.dtype)[:, :, None]  # [B, C, 1, H, W]
  coupled, _ = couple(list(means.unbind(1)), coeffs, lambda c, _: x_C1[:, c])
  centered = x_C1 - torch.stack(coupled, 1)
  inv_scale = torch.exp(-log_scales)
  softplus_neg_plus = softplus(-inv_scale * (centered + HALF_BIN))
  softplus_min = softplus(inv_scale * (centered - HALF_BIN))
  # sigmoid(plus) - sigmoid(min) = sigmoid(plus) (1 - sigmoid(min)) (1 - exp(-(plus - min))).
  log_bin_width = torch.log(-torch.expm1(-2.0 * HALF_BIN * inv_scale))
  log_prob = torch.where(x_C1 < -0.999, -softplus_neg_plus,
                         torch.where(x_C1 > 0.999, -softplus_min,
                                     log_bin_width - softplus_neg_plus
                                     - softplus_min))
  log_prob_K = log_prob.sum(1) + torch.log_softmax(logits, 1)   # [B, K, H, W]
  return -torch.logsumexp(log_prob_K, 1).sum((1, 2))


def logistic_mixture_mean(out_BPHW: torch.Tensor, channels: int, k: int
                          ) -> torch.Tensor:
  """jaxgen's logistic_mixture_mean: E[x] in [0, 1] (clipping at the edges
  ignored), each component's means coupled by its own coupled means."""
  logits, means, _, coeffs = split_mixture(out_BPHW, channels, k)
  component_means, _ = couple(list(means.unbind(1)), coeffs, lambda c, value: value)
  weights = torch.softmax(logits, 1)[:, None]                   # [B, 1, K, H, W]
  mean = (torch.stack(component_means, 1) * weights).sum(2)
  return torch.clamp((mean + 1.0) / 2.0, 0.0, 1.0)


def logistic_mixture_sample(out_BPHW: torch.Tensor, channels: int, k: int
                            ) -> torch.Tensor:
  """jaxgen's logistic_mixture_sample: a component per pixel from the
  mixture weights, a logistic draw per channel, coupled by the clipped draws
  of the channels before; 8-bit pixels as u8 / 255."""
  logits, means, log_scales, coeffs = split_mixture(out_BPHW, channels, k)
  gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-20, 1.0)))
  onehot = F.one_hot((logits + gumbel).argmax(1), k).permute(0, 3, 1, 2)[:, None]
  onehot = onehot.to(means.dtype)                                # [B, 1, K, H, W]
  mu, log_s, coeff = ((a * onehot).sum(2) for a in (means, log_scales, coeffs))
  u = torch.rand_like(mu) * (1.0 - 2e-5) + 1e-5
  noise = log_s.exp() * (torch.log(u) - torch.log1p(-u))
  _, fed = couple([mu[:, c] + noise[:, c] for c in range(channels)], coeff,
                  lambda c, value: value.clamp(-1.0, 1.0))
  return torch.round((torch.stack(fed, 1) + 1.0) * 127.5) / 255.0


def pixel_likelihood(model_cfg: Any, channels: int
                     ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                Callable[[torch.Tensor], torch.Tensor],
                                Callable[[torch.Tensor], torch.Tensor], int]:
  """(nll(decoder out, x01) -> nats [B], mean(decoder out) -> x01,
  draw(decoder out) -> x01, the decoder's output channels) of
  model.likelihood, as jaxgen/likelihoods.make."""
  name = model_cfg.likelihood
  if name == "bernoulli":
    return (bernoulli_nll_nats, torch.sigmoid,
            lambda out: torch.bernoulli(torch.sigmoid(out)), channels)
  if name == "gaussian":
    std = float(model_cfg.gaussian_std)
    return (lambda out, x01: gaussian_nll_nats(out, x01, std),
            lambda out: out.clamp(0.0, 1.0),
            lambda out: (out + std * torch.randn_like(out)).clamp(0.0, 1.0), channels)
  k = int(model_cfg.num_mixtures)
  return (lambda out, x01: logistic_mixture_nll_nats(out, x01, k),
          lambda out: logistic_mixture_mean(out, channels, k),
          lambda out: logistic_mixture_sample(out, channels, k),
          logistic_mixture_channels(channels, k))


def latent_shape(config: Any, image_shape: tuple[int, int, int]
                 ) -> tuple[int, ...]:
  """(latent_dim,), or (latent_channels, h, w) for a latent map at the
  encoder's coarsest resolution (jaxgen's _latent_layout, channels first)."""
  m = config.model
  if not m.latent_channels:
    return (m.latent_dim,)
  factor = 2 ** len(m.encoder_widths)
  if factor != 2 ** len(m.decoder_widths):
    raise ValueError("a latent map needs as many decoder stages as encoder ones")
  return (m.latent_channels, image_shape[0] // factor, image_shape[1] // factor)


def append_label(x: torch.Tensor, onehot_BK: torch.Tensor) -> torch.Tensor:
  """[B, C] or [B, C, H, W] + [B, K] -> K more channels (constant over a
  map): how the label reaches a dense layer or a convolution."""
  cond = onehot_BK.to(x.dtype).reshape(*onehot_BK.shape, *[1] * (x.dim() - 2))
  return torch.cat([x, cond.expand(-1, -1, *x.shape[2:])], 1)


class AutoencoderTwin:
  """Networks, optimizer and train step of one AE / VAE config."""

  def __init__(self, config: Any, image_shape: tuple[int, int, int],
               num_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32,
               schedule_fn: Callable[[int], float] | None = None,
               device: str = "cpu", compile_nets: bool = False):
    """schedule_fn(step) -> learning rate; default: jaxgen's schedule of the
    config (learning_rate). compile_nets: encoder and decoder through
    torch.compile (loss, clipping and the optimizer stay eager)."""
    require_supported(config)
    torch.manual_seed(seed)
    m = config.model
    self.variational = m.family == "vae"
    self.beta = float(m.beta) if self.variational else 0.0
    self.kl_warmup_steps = int(m.kl_warmup_steps)
    self.free_nats = float(m.free_nats)
    self.conditional = bool(m.conditional)
    self.num_classes = num_classes
    self.latent_shape = latent_shape(config, image_shape)
    self.latent_dim = int(np.prod(self.latent_shape))   # the flat size, as jaxgen's
    self.dynamic = config.data.binarize == "dynamic"
    self.grad_clip_norm = float(config.optimizer.grad_clip_norm)
    extra = num_classes if self.conditional else 0
    channels = image_shape[2]
    self.nll, self.mean, self.draw, out_channels = pixel_likelihood(m, channels)
    # bits/dim metrics where jaxgen reports them: likelihoods of 8-bit pixels.
    self.bpd_dims = (int(np.prod(image_shape))
                     if m.likelihood == "discretized_logistic" else 0)
    latent_map = bool(m.latent_channels)
    code_size = 2 if self.variational else 1
    self.encoder = Encoder(image_shape[:2], channels + extra,
                           tuple(m.encoder_widths), m.hidden,
                           code_size * self.latent_shape[0], m.res_blocks,
                           spatial=latent_map)
    # With the AR head the decoder emits features for it.
    self.ar_head = (LocalARHead(m.ar_context, channels, m.ar_hidden, out_channels)
                    if m.ar_context else None)
    self.decoder = Decoder(image_shape, self.latent_shape[0] + extra,
                           tuple(m.decoder_widths), m.hidden,
                           m.ar_hidden if self.ar_head else out_channels,
                           m.res_blocks, latent_map=latent_map)
    self.encoder.to(device, dtype)
    self.decoder.to(device, dtype)
    self.params = [*self.encoder.parameters(), *self.decoder.parameters()]
    if self.ar_head:
      self.ar_head.to(device, dtype)
      self.params += list(self.ar_head.parameters())
    if compile_nets:
      self.encoder, self.decoder = torch.compile(self.encoder), torch.compile(self.decoder)
      if self.ar_head:  # the parallel pass; sampling calls its own method
        self.ar_head.forward = torch.compile(self.ar_head.forward)
    self.opt, self.schedule = config_optimizer(config, self.params, schedule_fn)
    self.step = 0

  def to_pixels(self, images_u8_BCHW: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] in float32, as jaxgen's (whatever the params' dtype)."""
    x = images_u8_BCHW.float() / 255.0
    return torch.bernoulli(x) if self.dynamic else x

  def loss_terms(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
                 eps: torch.Tensor | None, encoder_x01: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, batch-mean metrics) of pixels x01 and posterior noise eps (of
    the latent's shape: [B, L], or [B, C, h, w] for a latent map).
    encoder_x01 (default x01): the encoder's pixels, for the check, where
    jaxgen's float32 pixels round differently on the two paths."""
    enc_in = x01_BCHW if encoder_x01 is None else encoder_x01
    onehot = None
    if self.conditional:  # the label as constant extra input channels
      onehot = F.one_hot(labels_B.long(), self.num_classes)
      enc_in = append_label(enc_in, onehot)
    code = self.encoder(enc_in)
    if self.variational:
      # Features (vector) or channels (map): mean first, as jaxgen splits.
      mean, logvar = code.chunk(2, 1)
      z = mean + torch.exp(0.5 * logvar) * eps
    else:
      z = code
    out = self.decoder(z if onehot is None else append_label(z, onehot))
    if self.ar_head:  # teacher forcing: the head reads the true image
      out = self.ar_head(out, x01_BCHW)
    recon = self.nll(out, x01_BCHW)
    if not self.variational:
      loss = recon.mean()
      return loss, self.with_bpd({"loss": loss, "recon_nats": loss})
    kl_B_ = gaussian_kl_nats_per_dim(mean, logvar)
    kl = kl_B_.flatten(1).sum(1)
    kl_weight = self.beta
    if self.kl_warmup_steps:
      kl_weight = self.beta * min(1.0, self.step / self.kl_warmup_steps)
    loss = recon.mean() + kl_weight * free_bits_kl_nats(kl_B_, self.free_nats)
    return loss, self.with_bpd({
        "loss": loss, "neg_elbo_nats": (recon + kl).mean(),
        "recon_nats": recon.mean(), "kl_nats": kl.mean()})

  def with_bpd(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """jaxgen's *_bpd copies of the *_nats metrics, for 8-bit likelihoods."""
    if self.bpd_dims:
      scale = self.bpd_dims * math.log(2.0)
      metrics |= {k.replace("_nats", "_bpd"): v / scale
                  for k, v in list(metrics.items()) if k.endswith("_nats")}
    return metrics

  def backward(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
               eps: torch.Tensor | None, encoder_x01: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """The loss's gradients into the params' .grad; metrics as tensors (no
    host sync), with grad_norm before clipping as jaxgen reports it."""
    self.opt.zero_grad(set_to_none=True)
    loss, metrics = self.loss_terms(x01_BCHW, labels_B, eps, encoder_x01)
    loss.backward()
    return ({k: v.detach() for k, v in metrics.items()}
            | {"grad_norm": global_grad_norm(self.params)})

  def apply_gradients(self, grad_norm: torch.Tensor) -> None:
    clip_and_step(self.params, self.opt, self.schedule, self.grad_clip_norm, grad_norm)
    self.step += 1

  def update(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
             eps: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One optimizer step on given pixels and posterior noise."""
    metrics = self.backward(x01_BCHW, labels_B, eps)
    self.apply_gradients(metrics["grad_norm"])
    return metrics

  def train_step(self, images_u8_BCHW: torch.Tensor, labels_B: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """jaxgen's train_step: fresh binarization and posterior noise, one update."""
    x01 = self.to_pixels(images_u8_BCHW)
    p = self.params[0]
    eps = (torch.randn(x01.shape[0], *self.latent_shape, dtype=p.dtype,
                       device=p.device)
           if self.variational else None)
    return self.update(x01, labels_B, eps)

  @torch.no_grad()
  def sample(self, num: int) -> torch.Tensor:
    """jaxgen's VAE sample(): decoder means E[x | z] of z ~ N(0, I), or with
    the AR head draws from p(x | z) pixel by pixel, for labels 0, 1, ..., 9,
    0, ... when conditional; NCHW in [0, 1]."""
    p = self.params[0]
    z = torch.randn(num, *self.latent_shape, dtype=p.dtype, device=p.device)
    if self.conditional:
      labels = torch.arange(num, device=p.device) % self.num_classes
      z = append_label(z, F.one_hot(labels, self.num_classes))
    out = self.decoder(z)
    if self.ar_head:
      return self.ar_head.decode_sequential(out, self.draw)
    return self.mean(out)

  def flax_layout(self) -> dict[str, tuple[nn.Module, str, tuple[int, ...]]]:
    """Flax param path ("encoder/Conv_0", "ar_head/window") -> (twin layer,
    layout, map shape)."""
    nets = [("encoder", self.encoder), ("decoder", self.decoder)]
    if self.ar_head:
      nets.append(("ar_head", self.ar_head))
    return {f"{net}/{name}": entry for net, module in nets
            for name, entry in module.flax_layout.items()}


def to_torch(kernel: np.ndarray, bias: np.ndarray, layout: str,
             map_hwc: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
  """A Flax layer's (kernel, bias), or their gradients, in the twin's layout.

  conv: HWIO -> OIHW. conv_to_shuffle: also reorders the output channels from
  depth_to_space's (row, col, channel) to PixelShuffle's (channel, row, col).
  dense: (in, out) -> (out, in); dense_from_map / dense_to_map: also reorder
  the flattened map side from NHWC's (h, w, c) to NCHW's (c, h, w);
  pointwise: a Dense on each pixel as a 1x1 conv, (in, out) -> (out, in, 1, 1).
  """
  kernel, bias = np.asarray(kernel), np.asarray(bias)
  if layout == CONV_TO_SHUFFLE:
    kh, kw, cin, cout = kernel.shape
    kernel = kernel.reshape(kh, kw, cin, 4, cout // 4).swapaxes(3, 4).reshape(
        kh, kw, cin, cout)
    bias = bias.reshape(4, -1).T.reshape(-1)
  if layout in (CONV, CONV_TO_SHUFFLE):
    kernel = kernel.transpose(3, 2, 0, 1)
  elif layout == POINTWISE:
    kernel = kernel.T[:, :, None, None]
  elif layout == DENSE_FROM_MAP:
    kernel = kernel.reshape(*map_hwc, -1).transpose(2, 0, 1, 3).reshape(
        kernel.shape).T
  elif layout == DENSE_TO_MAP:
    kernel = kernel.reshape(-1, *map_hwc).transpose(0, 3, 1, 2).reshape(
        kernel.shape).T
    bias = bias.reshape(map_hwc).transpose(2, 0, 1).reshape(-1)
  else:
    kernel = kernel.T
  return torch.tensor(kernel), torch.tensor(bias)


def flax_leaves(params: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"encoder/Conv_0": (kernel, bias)} of jaxgen's VAE params (or grads);
  the AR head's causal window (unmasked kernel, bias) as "ar_head/window"."""
  out = {}
  if "ar_head" in params:
    head = dict(params["ar_head"]["params"])
    out["ar_head/window"] = (np.asarray(head.pop("window_kernel")),
                             np.asarray(head.pop("window_bias")))
    for name, layer in head.items():
      out[f"ar_head/{name}"] = (np.asarray(layer["kernel"]), np.asarray(layer["bias"]))

  def visit(prefix: str, node: Any) -> None:
    if "kernel" in node:
      out[prefix] = (np.asarray(node["kernel"]), np.asarray(node["bias"]))
      return
    for key, child in node.items():
      visit(f"{prefix}/{key}" if prefix else key, child)

  for net in ("encoder", "decoder"):
    visit(net, params[net]["params"])
  return out


def load_flax_params(twin: AutoencoderTwin, params: Any) -> None:
  """Copies jaxgen's params into the twin; every layer on each side must match."""
  leaves, layout = flax_leaves(params), twin.flax_layout()
  if set(leaves) != set(layout):
    raise ValueError(f"layers differ: jaxgen only {sorted(set(leaves) - set(layout))}, "
                     f"twin only {sorted(set(layout) - set(leaves))}")
  with torch.no_grad():
    for name, (module, kind, shape) in layout.items():
      kernel, bias = to_torch(*leaves[name], kind, shape)
      module.weight.copy_(kernel)
      module.bias.copy_(bias)


def relative_diffs(jax_leaves: dict[str, tuple[np.ndarray, np.ndarray]],
                   twin: AutoencoderTwin, of_grads: bool) -> tuple[float, float]:
  """max_tensor_diffs over every weight and bias, between jaxgen's
  (converted) and the twin's params or grads."""
  refs, ours = {}, {}
  for name, (module, kind, shape) in twin.flax_layout().items():
    refs[f"{name}/weight"], refs[f"{name}/bias"] = to_torch(*jax_leaves[name], kind, shape)
    ours[f"{name}/weight"], ours[f"{name}/bias"] = module.weight, module.bias
  return max_tensor_diffs(refs, ours, of_grads)


def get_config(name: str, overrides: list[str] = ()) -> Any:
  """configs/<name>.py's config ("vae_mnist" or "vae_mnist:smoke"), with
  "model.beta=4"-style overrides (values as Python literals)."""
  module_name, _, arg = name.partition(":")
  module = __import__(f"configs.{module_name}", fromlist=["get_config"])
  config = module.get_config(arg or None)
  for item in overrides:
    path, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:  # a misspelt override must not pass unnoticed
      raise ValueError(f"{path}: {name}'s config has no such key")
    node[leaf] = value
  return config


def config_names(text: str) -> list[str]:
  """"vae_mnist,ddpm_cifar10:cpu,smoke" -> ["vae_mnist", "ddpm_cifar10:cpu,smoke"]:
  comma-separated config names whose own options are comma-separated too; a
  piece that names no configs/<piece>.py is an option of the name before."""
  names: list[str] = []
  for piece in text.split(","):
    if names and not (ROOT / "configs" / f"{piece.partition(':')[0]}.py").exists():
      names[-1] += "," + piece
    else:
      names.append(piece)
  return names


def random_batch(spec: Any, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of uniform random uint8 images (NHWC) and labels of a dataset
  spec: what the speed benchmark and the check feed both sides."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, *spec.image_shape),
                                dtype=np.uint8),
          "label": rng.integers(0, spec.num_classes, batch_size, dtype=np.int32)}


def jaxgen_step_in(family: Any, batch: dict[str, np.ndarray], seed: int,
                   dtype: str) -> tuple[Any, Callable, Callable]:
  """jaxgen's initial state with its float params cast to `dtype`, its jitted
  train_step, and the jitted gradient of the loss that train_step reports
  (through jaxgen's own loss code) with respect to the params. Call it
  under jax.enable_x64 for float64."""
  import jax  # pylint: disable=g-import-not-at-top
  jnp = jax.numpy
  state = jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
      jax.jit(family.init)(jax.random.PRNGKey(seed), batch))
  step_fn = jax.jit(family.train_step)
  grad_fn = jax.jit(jax.grad(
      lambda params, st, bt, key: family.train_step(st.replace(params=params),
                                                    bt, key)[1]["loss"]))
  return state, step_fn, grad_fn


def max_tensor_diffs(refs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor],
                     of_grads: bool) -> tuple[float, float]:
  """(max abs difference, max of abs difference / the reference's max abs)
  over the tensors of `ours` (their .grad with of_grads) against `refs`, the
  same names in the twin's layout."""
  max_abs, max_rel = 0.0, 0.0
  for name, tensor in ours.items():
    value = (tensor.grad if of_grads else tensor).detach()
    ref = refs[name]
    diff = float((value - ref).abs().max())
    max_abs = max(max_abs, diff)
    max_rel = max(max_rel, diff / max(float(ref.abs().max()), 1e-30))
  return max_abs, max_rel


def record_max(result: dict[str, float], kind: str, abs_diff: float,
               rel_diff: float) -> None:
  """Keeps the largest `kind`_abs and `kind`_rel difference seen in result."""
  result[f"{kind}_abs"] = max(result.get(f"{kind}_abs", 0.0), abs_diff)
  result[f"{kind}_rel"] = max(result.get(f"{kind}_rel", 0.0), rel_diff)


def record_metric_diffs(result: dict[str, float], ours: dict[str, Any],
                        metrics: dict[str, Any]) -> None:
  """Every metric of jaxgen's step against the twin's, into result["metric_*"]."""
  for name, value in metrics.items():
    diff = abs(float(ours[name]) - float(value))
    record_max(result, "metric", diff, diff / max(abs(float(value)), 1e-30))


def step_both(result: dict[str, float], twin: Any, ours: dict[str, Any],
              grad_diffs: tuple[float, float], step_fn: Callable[..., Any],
              state: Any, batch: Any, key: Any) -> tuple[Any, Any]:
  """After a check compared the gradients: one update on each side (the
  twin's with its own grad norm), recording the metrics' and gradients'
  differences. Returns jaxgen's (state, metrics)."""
  twin.apply_gradients(ours["grad_norm"])
  state, metrics = step_fn(state, batch, key)
  record_metric_diffs(result, ours, metrics)
  record_max(result, "grad", *grad_diffs)
  return state, metrics


# The differences every check prints, as (label, result kind).
STEP_DIFFS = (("metrics", "metric"), ("grads", "grad"),
              ("params after the steps", "param"))


def diffs_text(result: dict[str, float], labelled_kinds) -> str:
  """"metrics 1.2e-15 (3.4e-16), grads ...": each (label, kind)'s max abs
  and relative difference from a check's result."""
  return ", ".join(f"{label} {result[kind + '_abs']:.2e} ({result[kind + '_rel']:.2e})"
                   for label, kind in labelled_kinds)


def assert_within(result: dict[str, float], kinds: tuple[str, ...], tol: float
                  ) -> None:
  for kind in kinds:
    assert result[f"{kind}_rel"] <= tol, (
        f"{kind}s differ: max relative difference {result[f'{kind}_rel']:.2e} > {tol}")


def flat_to_latent(eps_BL: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
  """jaxgen's flat latent noise [B, L] in the twin's latent shape: a map is
  flattened NHWC on jaxgen's side, NCHW in the twin."""
  if len(shape) == 1:
    return eps_BL
  c, h, w = shape
  return eps_BL.reshape(-1, h, w, c).permute(0, 3, 1, 2).contiguous()


def check(config: Any, steps: int = 3, seed: int = 0, tol: float = 1e-4,
          dtype: str = "float64") -> dict[str, float]:
  """Twin vs jaxgen on one batch for `steps` train steps, with jaxgen's noise
  injected into the twin. Returns the max differences; raises AssertionError
  when a relative difference exceeds `tol`.

  Compared: the twin's learning-rate schedule with jaxgen's at every step of
  training (relative to the peak); at each step, the loss and every metric
  jaxgen's train_step returns, and the gradient of the loss, per tensor
  (jax.grad of the loss that jaxgen's train_step returns, so through its own
  loss code); after the steps, every param (so Adam and the KL warm-up). A
  tensor's relative difference is to its largest magnitude. jaxgen's noise is
  redrawn from the step's key as vae.py's train_step draws it (pixel key, eps
  key = split(key)); the loss comparison fails if that drifts.

  In the steps the twin takes jaxgen's learning rates: optax evaluates the
  schedule in float32 (an int32 step count) even under x64, and Adam's
  scale-free update grows that 1e-8 rounding to ~1e-4 in params within a few
  steps wherever a gradient is near zero. jaxgen's KL warm-up weight (step /
  kl_warmup_steps) is float32 too: with a warm-up expect ~1e-7 differences
  in the loss and up to ~1e-4 in params after a few steps, for the same
  reason. 8-bit pixels: the twin is handed the [-1, 1] values jaxgen's step
  computes (the module docstring says why), as x01 = (that + 1) / 2 in
  float64; the mixture likelihood reads only those, but a Bernoulli or
  Gaussian likelihood on 8-bit intensities (binarize="none", an override
  here) reads x01 itself, which then differs from jaxgen's float32 u8 / 255
  by a float32 rounding (~1e-7 relative in the loss).

  Both sides compute in `dtype`: jaxgen's initial params are cast and it
  runs under jax.enable_x64 for float64. float64 is what the check is for:
  in float32 both sides' rounding flips a few ReLU inputs that sit at the
  kink, which moves some gradients by ~1e-3 relative (jaxgen's own float32
  gradients differ from float64 as much), and Adam's sign-like first steps
  turn that into params apart by the learning rate.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import data, optim  # pylint: disable=g-import-not-at-top
  from jaxgen.models import make_family  # pylint: disable=g-import-not-at-top
  from jaxgen.nets.conv import append_channels  # pylint: disable=g-import-not-at-top

  jnp = jax.numpy
  with jax.enable_x64(dtype == "float64"):
    spec = data.SPECS[config.data.name]
    family = make_family(config, spec)
    b = config.train.batch_size
    batch = random_batch(spec, b, seed)
    jax_schedule = optim.learning_rate_schedule(config.optimizer,
                                                config.train.num_steps)
    all_steps = np.arange(config.train.num_steps + 1)
    jax_lr = np.asarray(jax_schedule(jnp.asarray(all_steps, jnp.int32)))
    twin_lr = np.array([learning_rate(config.optimizer, config.train.num_steps, t)
                        for t in all_steps.tolist()])
    lr_abs = float(np.abs(twin_lr - jax_lr).max())
    state, step_fn, grad_fn = jaxgen_step_in(family, batch, seed, dtype)
    z_shape = latent_shape(config, spec.image_shape)

    @jax.jit
    def noise(key, images_u8, labels):
      pixel_key, eps_key = jax.random.split(key)
      x01 = (data.binarize(pixel_key, images_u8)
             if config.data.binarize == "dynamic"
             else images_u8.astype(jnp.float32) / 255.0)
      # The [-1, 1] pixels as jaxgen's step computes them (see the
      # docstring): the likelihood's, and the encoder's, which come after the
      # label channels when conditional. The images are an argument, as XLA
      # would fold a constant batch with other rounding.
      enc_in = x01
      if config.model.conditional:
        enc_in = append_channels(x01, jax.nn.one_hot(labels, spec.num_classes,
                                                     dtype=x01.dtype))
      eps = jax.random.normal(eps_key, (b, int(np.prod(z_shape))))
      return x01 * 2.0 - 1.0, enc_in * 2.0 - 1.0, eps

    def twin_pixels(pm1_BHWC: Any) -> torch.Tensor:
      """float64 x01 whose x01 * 2 - 1 in the twin is pm1 exactly."""
      x01 = (torch.from_numpy(np.array(pm1_BHWC, np.float64)) + 1.0) / 2.0
      return x01[..., :spec.image_shape[2]].permute(0, 3, 1, 2).contiguous()

    # Jitted, as optax evaluates it inside the step (evaluated op by op, a
    # warm-up's first rates differ from those by up to 8e-6 relative).
    jitted_schedule = jax.jit(jax_schedule)
    twin = AutoencoderTwin(config, spec.image_shape, spec.num_classes, seed,
                           getattr(torch, dtype),
                           lambda t: float(jitted_schedule(jnp.int32(t))))
    load_flax_params(twin, state.params)
    labels = torch.from_numpy(batch["label"].astype(np.int64))
    result = {"lr_abs": lr_abs, "lr_rel": lr_abs / config.optimizer.learning_rate}
    for i in range(steps):
      key = jax.random.PRNGKey(seed + 1 + i)
      grads = grad_fn(state.params, state, batch, key)
      pm1, enc_pm1, eps = noise(key, batch["image"], batch["label"])
      eps = flat_to_latent(torch.tensor(np.asarray(eps), dtype=getattr(torch, dtype)),
                           z_shape)
      ours = twin.backward(twin_pixels(pm1), labels,
                           eps if twin.variational else None, twin_pixels(enc_pm1))
      state, metrics = step_both(
          result, twin, ours, relative_diffs(flax_leaves(grads), twin, of_grads=True),
          step_fn, state, batch, key)
    result["param_abs"], result["param_rel"] = relative_diffs(
        flax_leaves(state.params), twin, of_grads=False)
    result["loss"] = float(metrics["loss"])
    if twin.ar_head:
      result |= check_ar_sampler(config, spec, twin, state.params, seed)
  assert_within(result, ("lr", "metric", "grad", "param"), tol)
  if twin.ar_head:
    assert result["decode_rel"] <= tol, (
        f"raster decodes differ: max relative difference {result['decode_rel']:.2e} > {tol}")
    assert result["draw_max_z"] < 6.0 and abs(result["draw_mean_z2"] - 1.0) < 0.1, (
        f"the twin's draws do not follow jaxgen's: per-value z of their means and spreads "
        f"max {result['draw_max_z']:.2f}, mean square {result['draw_mean_z2']:.3f} "
        "(same distribution: about 4 and 1)")
  return result


def check_ar_sampler(config: Any, spec: Any, twin: AutoencoderTwin, params: Any,
                     seed: int, num_images: int = 4, draws: int = 1000
                     ) -> dict[str, float]:
  """The twin's pixel-by-pixel sampler against jaxgen's, on the twin's
  (jaxgen's, loaded) params, in the twin's dtype (call under jax.enable_x64
  for float64):
  - decode_abs / decode_rel: the raster decode of the same decoder features
    by both loops (twin's LocalARHead.decode_sequential, jaxgen's
    autoregressive.decode_sequential), with the likelihood's mean as each
    pixel's value, so both are deterministic and must agree to rounding;
  - draw_max_z / draw_mean_z2: `draws` draws of each side's likelihood
    sampler from the same parameters (the head's parallel pass over that
    decode; for the mixture spread out and narrowed, below); for every pixel
    value and its square, the difference of the two sides' sample means over
    its standard error. Under one distribution these z are about standard
    normal (max about 4 over these few thousand values, mean square 1 +-
    0.03). Planted errors in the twin's mixture sampler, each caught: draws
    5% too far from the middle, component scales 10% too wide, no colour
    coupling."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import likelihoods  # pylint: disable=g-import-not-at-top
  from jaxgen.nets import autoregressive  # pylint: disable=g-import-not-at-top
  jnp = jax.numpy
  m = config.model
  channels = spec.image_shape[2]
  likelihood = likelihoods.make(m.likelihood, channels, m.num_mixtures,
                                m.gaussian_std)
  head = autoregressive.LocalARHead(context=m.ar_context, channels=channels,
                                    hidden=m.ar_hidden,
                                    out_channels=likelihood.out_channels)
  dtype = twin.params[0].dtype
  generator = torch.Generator().manual_seed(seed)
  z = torch.randn(num_images, *twin.latent_shape, generator=generator, dtype=dtype)
  if twin.conditional:
    z = append_label(z, F.one_hot(torch.arange(num_images) % twin.num_classes,
                                  twin.num_classes))
  to_nhwc = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy())
  with torch.no_grad():
    features = twin.decoder(z)
    ours = twin.ar_head.decode_sequential(features, twin.mean)
    out = twin.ar_head(features, ours)
    if m.likelihood == "discretized_logistic":
      # Near initialisation every component is wide (scale ~1 on [-1, 1]) and
      # most draws clip to 0 or 255, which hides a wrong scale or coupling:
      # spread the parameters, narrow the components to a few bins and make
      # the component choice sharp, so a pixel's spread is mostly its
      # component's.
      k = int(m.num_mixtures)
      out = out * 3.0
      out[:, :k] *= 4.0
      out[:, k + channels * k:k + 2 * channels * k] -= 3.0
    torch.manual_seed(seed)
    twin_draws = torch.stack([twin.draw(out) for _ in range(draws)])
  theirs = jax.jit(lambda f: autoregressive.decode_sequential(
      head, params["ar_head"], f, channels, lambda _, o: likelihood.mean(o),
      jax.random.PRNGKey(0)))(to_nhwc(features))
  theirs = torch.from_numpy(np.array(theirs)).permute(0, 3, 1, 2)
  decode_abs = float((ours - theirs).abs().max())
  jax_draws = jax.jit(jax.vmap(lambda k: likelihood.sample(k, to_nhwc(out))))(
      jax.random.split(jax.random.PRNGKey(seed), draws))
  jax_draws = torch.from_numpy(np.array(jax_draws, np.float64)).permute(0, 1, 4, 2, 3)
  # Means and spreads about the pooled mean: the mean alone misses a wrong scale.
  twin_draws = twin_draws.double()
  pooled = (twin_draws.mean(0) + jax_draws.mean(0)) / 2
  twin_draws = torch.cat([twin_draws, (twin_draws - pooled) ** 2], 1)
  jax_draws = torch.cat([jax_draws, (jax_draws - pooled) ** 2], 1)
  diff = twin_draws.mean(0) - jax_draws.mean(0)
  se = ((twin_draws.var(0) + jax_draws.var(0)) / draws).sqrt()
  # A value both sides always draw the same (se 0) counts as z = 0.
  z_values = torch.where(se > 0, diff / se.clamp(min=1e-300), diff.abs() * math.inf)
  z_values = torch.nan_to_num(z_values, nan=0.0)
  return {"decode_abs": decode_abs,
          "decode_rel": decode_abs / max(float(theirs.abs().max()), 1e-30),
          "draw_max_z": float(z_values.abs().max()),
          "draw_mean_z2": float((z_values ** 2).mean())}


def check_arg_parser(doc: str, default_configs: str, set_example: str
                     ) -> argparse.ArgumentParser:
  """The command line of a twin's `check` (every benchmarks/torch_*.py)."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("mode", choices=["check"])
  parser.add_argument("--config", default=default_configs,
                      help="comma-separated config names "
                      "(name, name:smoke, name:cpu,smoke)")
  parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help=f"config override, e.g. {set_example}")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--tol", type=float, default=1e-4)
  return parser


def main() -> None:
  parser = check_arg_parser(__doc__, "ae_mnist,vae_mnist,cvae_mnist,"
                            "vae_cifar10,cvae_cifar10,vae_mnist:ar,vae_cifar10:ar",
                            "model.kl_warmup_steps=2")
  parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
  args = parser.parse_args()
  for name in config_names(args.config):
    r = check(get_config(name, args.set), args.steps, tol=args.tol, dtype=args.dtype)
    print(f"{name} ({args.dtype}): OK over {args.steps} steps (loss "
          f"{r['loss']:.4f}); max abs (relative) differences: "
          + diffs_text(r, (("lr schedule", "lr"), *STEP_DIFFS))
          + (f"; {diffs_text(r, [('raster decode', 'decode')])}; draws: "
             f"z of their means max {r['draw_max_z']:.2f}, mean square "
             f"{r['draw_mean_z2']:.3f}" if "decode_abs" in r else ""),
          flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
