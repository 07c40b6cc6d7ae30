"""The PyTorch twin of jaxgen's GANs (configs/dcgan_mnist.py, dcgan_cifar10.py,
sngan_cifar10.py, cgan_cifar10.py, acgan_cifar10.py), built from the jaxgen
config object.

The same networks (jaxgen/nets/gan.py: [z, one-hot label] -> dense -> coarse
map -> sub-pixel upsampling stages -> tanh; space_to_depth + 3x3 convs, or 4x4
stride-2 convs, -> LeakyReLU(0.2) -> dense score, plus the projection of a
label embedding and AC-GAN's class head; N(0, 0.02) weights, zero biases;
channels reordered so that PixelShuffle / PixelUnshuffle see depth_to_space's
/ space_to_depth's (row, col, channel) order), the same batch norm (Flax's:
momentum 0.9, epsilon 1e-5, and running statistics of the *biased* batch
variance, where torch's BatchNorm keeps the unbiased one), the same spectral
norm (Flax's nn.SpectralNorm as jaxgen uses it: one power iteration per
training call of D, from the u it stored, u and v without gradient,
x * rsqrt(|x|^2 + 1e-12) normalisation, u over the output channels; the
kernel's flattening order differs and does not matter), the same losses
(non-saturating, hinge, WGAN-GP; AC-GAN's class cross-entropy on real images
for D and on fakes for G), the same step (`model.disc_steps` D updates, each
on its own share of the batch and as many fresh fakes from G in training mode
whose batch-norm statistics are not kept, D scoring real then fake; then one
G update on fresh fakes for the last share's labels, in which D's batch-norm
statistics and spectral-norm vectors move too, as in jaxgen), the same
optimizers (benchmarks/torch_vae.py's make_optimizer: G at
`optimizer.learning_rate`, D at `model.disc_learning_rate` when set, D's
schedule counting D updates, global-norm clipping per network) and the same
EMA of G's weights (decay 0 before `model.ema_start`). Only the updated
network's gradients are computed (backward(inputs=...)), as jax.grad does.
sample() is jaxgen's: G(z) in eval mode with its running statistics, or the
EMA generator with "standing statistics" (a training-mode pass of
`model.standing_stats_batch` fresh noise vectors stores that batch's
statistics); labels 0, 1, ..., 9, 0, ... when conditional. Tensors are NCHW.
Layer norm (`model.gen_norm` / `disc_norm` = "layer") is Flax's: each pixel
over its channels. Not covered (a ValueError says so): conditional batch norm
(`model.gen_conditioning` = "norm") and a bfloat16 `model.compute_dtype`.

The equivalence check (`check`) copies jaxgen's initial params and statistics
(batch-norm running statistics, spectral-norm u) into the twin, gives it the
latents (and WGAN-GP mixing weights) that jaxgen's train_step draws from its
key, and compares in float64: both learning-rate schedules; at each step
every metric jaxgen's train_step returns and the gradient of every D update
and of the G update (jax.grad through jaxgen's own disc_update / gen_update);
after the steps every param, every statistic and the EMA params; then
sample()'s images for the same latents. Each relative to the tensor's
largest magnitude, under `--tol` (1e-4). Metrics, gradients and samples agree
to ~1e-14 relative; params, statistics and EMA params too where D has no
batch norm (sngan_cifar10, WGAN-GP). Where it has (dcgan_*, cgan, acgan),
params end ~5e-9 and statistics ~2e-8 apart, all of it in two places: the
bias of each D conv that feeds a batch norm has an exactly zero gradient
(the norm removes any per-channel shift), so both sides return rounding
noise (~1e-15) for it, and Adam's lr * g / (|g| + eps) turns that noise into
~1e-10 moves of the bias, which its batch norm's running mean then holds.
Such a bias is measured against its kernel's magnitude, not its own (~1e-10
of noise); everything else stays under 1e-11. The bias has no effect on D's
output, which is why metrics and gradients stay at 1e-14. The pixels are
jaxgen's float32 ones as XLA computes them (one fused multiply-add with
float32(1 / 127.5), not x / 127.5 - 1: with numpy's pixels every number
moved by ~1e-8).

    python benchmarks/torch_dcgan.py check      # the five configs, :smoke and full size
    python benchmarks/torch_dcgan.py check --config=sngan_cifar10:smoke --set model.ema_start=1
    python benchmarks/torch_dcgan.py check --config=dcgan_mnist:smoke \\
        --set model.loss=wgan_gp --set model.disc_norm=none

(The smoke sngan_cifar10 starts its EMA at step 5: with 3 steps the EMA is a
copy of G; `model.ema_start=1` makes steps 2 and 3 average.)

Train it for a wall-clock budget and write 10,000 samples for jaxgen to score:

    pip install -r benchmarks/requirements.txt
    python benchmarks/torch_dcgan.py --dataset=mnist --seconds=900 --out=runs/torch_dcgan_mnist
    python run.py --config=configs/dcgan_mnist.py --mode=score \\
        --samples=runs/torch_dcgan_mnist/samples_10000.npz

(`--config=sngan_cifar10` and the others train those configs' twins.)
benchmarks/speed.py times its train step against jaxgen's.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_vae  # pylint: disable=g-import-not-at-top,wrong-import-position

# A jaxgen array (Flax layout) -> the same tensor in the twin's layout.
Convert = Callable[[np.ndarray], np.ndarray]
LOSSES = ("nonsaturating", "hinge", "wgan_gp")
COVERED = ("dcgan_mnist", "dcgan_cifar10", "sngan_cifar10", "cgan_cifar10",
           "acgan_cifar10")


def require_supported(config: Any) -> None:
  """Raises ValueError for GAN settings the twin does not build."""
  m = config.model
  if m.family != "gan":
    raise ValueError(f"model.family={m.family!r}: the twin covers 'gan'")
  for key in ("gen_norm", "disc_norm"):
    if m[key] not in ("batch", "layer", "none"):
      raise ValueError(f"model.{key}={m[key]!r}: not in the twin")
  if m.conditional and m.gen_conditioning != "concat":
    raise ValueError(f"model.gen_conditioning={m.gen_conditioning!r}: the twin "
                     "has 'concat' (conditional batch norm is not in it)")
  if m.loss not in LOSSES:
    raise ValueError(f"model.loss={m.loss!r}: the twin has {LOSSES}")
  torch_vae.require_float32(config)
  if m.downsample not in ("space_to_depth", "strided"):
    raise ValueError(f"model.downsample={m.downsample!r}: not in the twin")


# --- layouts -----------------------------------------------------------------


def hwc_to_chw(a: np.ndarray, axis: int, hwc: tuple[int, int, int]) -> np.ndarray:
  """Reorders one axis of length h*w*c from NHWC's (h, w, c) flattening to
  NCHW's (c, h, w). With hwc = (2, 2, C) it is depth_to_space's channel order
  (row, col, channel) to PixelShuffle's (channel, row, col)."""
  a = np.moveaxis(np.asarray(a), axis, 0)
  rest = a.shape[1:]
  a = np.moveaxis(a.reshape(*hwc, *rest), 2, 0).reshape(-1, *rest)
  return np.moveaxis(a, 0, axis)


def conv_kernel(k: np.ndarray) -> np.ndarray:
  return np.asarray(k).transpose(3, 2, 0, 1)   # HWIO -> OIHW


def _same(a: np.ndarray) -> np.ndarray:
  return np.asarray(a)


# --- layers --------------------------------------------------------------------


def dcgan_init_(layer: nn.Module) -> nn.Module:
  """jaxgen's _DCGAN_INIT: weights ~ N(0, 0.02), zero biases."""
  nn.init.normal_(layer.weight, 0.0, 0.02)
  if getattr(layer, "bias", None) is not None:
    nn.init.zeros_(layer.bias)
  return layer


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
  """Flax's _l2_normalize (torch's spectral_norm divides by max(|x|, eps))."""
  return x * torch.rsqrt((x * x).sum() + eps)


class SpectralNormed:
  """Mixin for a Conv2d / Linear whose weight is divided by its top singular
  value, as Flax's nn.SpectralNorm(layer, n_steps=1) computes it: one power
  iteration from the stored u per call, u stored back when training (and
  `update_u`: jaxgen's WGAN-GP critic call does not keep its u), sigma =
  u.W.v with u and v constants for the gradient."""
  update_u = True

  # Eager under torch.compile: traced, the partitioner may save the u buffer
  # for the backward and recompute from it, and D's next call (fakes after
  # reals) overwrites it before that backward runs.
  @torch.compiler.disable
  @torch.no_grad()
  def power_iteration(self) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v), fresh tensors; stores u when training."""
    w_mat = self.weight.reshape(self.weight.shape[0], -1)
    v = l2_normalize(w_mat.t() @ self.u)
    u = l2_normalize(w_mat @ v)
    if self.training and self.update_u:
      self.u.copy_(u)
    return u, v

  def normalized_weight(self) -> torch.Tensor:
    u, v = self.power_iteration()
    w = self.weight
    sigma = torch.dot(u, w.reshape(w.shape[0], -1) @ v)
    return w / torch.where(sigma != 0, sigma, torch.ones_like(sigma))


class SNConv2d(SpectralNormed, nn.Conv2d):

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.register_buffer("u", torch.randn(self.out_channels))  # Flax: N(0, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self._conv_forward(x, self.normalized_weight(), self.bias)


class SNLinear(SpectralNormed, nn.Linear):

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.register_buffer("u", torch.randn(self.out_features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.normalized_weight(), self.bias)


class FlaxLayerNorm2d(nn.LayerNorm):
  """Flax's nn.LayerNorm on NHWC maps (epsilon 1e-5): each pixel normalized
  over its channels."""

  def __init__(self, width: int):
    super().__init__(width, eps=1e-5)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FlaxNamed(nn.Module):
  """Children named as Flax's compact modules name theirs (Conv_0, Dense_1,
  BatchNorm_0, ..., counted per kind in creation order), with `slots`: the
  jaxgen variable path ("params/Conv_0/kernel", "batch_stats/BatchNorm_0/mean",
  "batch_stats/SpectralNorm_1/Conv_1/kernel/u") -> (the twin's tensor name,
  the layout conversion), and `scale_of`: variables whose differences are
  measured against another's magnitude (the check's docstring says why)."""

  def __init__(self):
    super().__init__()
    self._counts: dict[str, int] = {}
    self.slots: dict[str, tuple[str, Convert]] = {}
    self.scale_of: dict[str, str] = {}

  def _next(self, kind: str) -> str:
    index = self._counts.get(kind, 0)
    self._counts[kind] = index + 1
    return f"{kind}_{index}"

  def add_layer(self, kind: str, layer: nn.Module, kernel: Convert,
                bias: Convert = _same, before_batch_norm: bool = False) -> nn.Module:
    """before_batch_norm: its outputs are normalized per channel, so its
    bias has a zero gradient, measured against its kernel's scale."""
    name = self._next(kind)
    self.add_module(name, dcgan_init_(layer))
    self.slots[f"params/{name}/kernel"] = (f"{name}.weight", kernel)
    self.slots[f"params/{name}/bias"] = (f"{name}.bias", bias)
    if before_batch_norm:
      self.scale_of[f"params/{name}/bias"] = f"params/{name}/kernel"
    if isinstance(layer, SpectralNormed):  # Flax wraps it in SpectralNorm_k
      wrapper = self._next("SpectralNorm")
      self.slots[f"batch_stats/{wrapper}/{name}/kernel/u"] = (
          f"{name}.u", lambda u: np.asarray(u)[0])
    return layer

  def add_batch_norm(self, width: int, momentum: float) -> torch_vae.FlaxBatchNorm2d:
    name = self._next("BatchNorm")
    layer = torch_vae.FlaxBatchNorm2d(width, momentum)
    self.add_module(name, layer)
    self.slots.update({f"params/{name}/scale": (f"{name}.weight", _same),
                       f"params/{name}/bias": (f"{name}.bias", _same),
                       f"batch_stats/{name}/mean": (f"{name}.running_mean", _same),
                       f"batch_stats/{name}/var": (f"{name}.running_var", _same)})
    return layer

  def add_norm(self, kind: str, width: int, momentum: float = 0.9
               ) -> nn.Module | None:
    """jaxgen's _norm: "batch", "layer" or "none" (None)."""
    if kind == "batch":
      return self.add_batch_norm(width, momentum)
    if kind == "none":
      return None
    name = self._next("LayerNorm")
    layer = FlaxLayerNorm2d(width)
    self.add_module(name, layer)
    self.slots.update({f"params/{name}/scale": (f"{name}.weight", _same),
                       f"params/{name}/bias": (f"{name}.bias", _same)})
    return layer

  def tensors(self) -> dict[str, torch.Tensor]:
    """jaxgen variable path -> this network's tensor."""
    own = {**dict(self.named_parameters()), **dict(self.named_buffers())}
    return {path: own[name] for path, (name, _) in self.slots.items()}


class Generator(FlaxNamed):
  """jaxgen's Generator: dense -> coarse map -> norm, ReLU -> [3x3 conv to
  4 * width, PixelShuffle(2), norm, ReLU] per stage -> 3x3 conv to
  4 * channels, PixelShuffle(2), tanh."""

  def __init__(self, image_shape: tuple[int, int, int], in_features: int,
               widths: tuple[int, ...], norm: str, bn_momentum: float = 0.9):
    super().__init__()
    height, width, channels = image_shape
    factor = 2 ** len(widths)
    if height % factor or width % factor:
      raise ValueError(f"image {height}x{width} is not divisible by {factor}")
    coarse_hwc = (height // factor, width // factor, widths[0])
    self.coarse_chw = (widths[0], *coarse_hwc[:2])
    make_norm = lambda c: self.add_norm(norm, c, bn_momentum)
    # Plain lists and dicts: the layers are registered once, by Flax name.
    self.parts = {"dense": self.add_layer(
        "Dense", nn.Linear(in_features, int(np.prod(coarse_hwc))),
        kernel=lambda k: hwc_to_chw(k, 1, coarse_hwc).T,
        bias=lambda b: hwc_to_chw(b, 0, coarse_hwc))}
    self.norms = [make_norm(widths[0])]
    self.convs = []
    for prev, stage in zip(widths[:-1], widths[1:]):
      self.convs.append(self._shuffle_conv(prev, stage))
      self.norms.append(make_norm(stage))
    self.parts["out"] = self._shuffle_conv(widths[-1], channels)

  def _shuffle_conv(self, in_channels: int, out_channels: int) -> nn.Module:
    hwc = (2, 2, out_channels)
    return self.add_layer(
        "Conv", nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1),
        kernel=lambda k: conv_kernel(hwc_to_chw(k, 3, hwc)),
        bias=lambda b: hwc_to_chw(b, 0, hwc))

  def forward(self, z_BL: torch.Tensor) -> torch.Tensor:
    x = self.parts["dense"](z_BL).view(-1, *self.coarse_chw)
    for i, norm in enumerate(self.norms):
      if i:
        x = F.pixel_shuffle(self.convs[i - 1](x), 2)
      x = F.relu(norm(x) if norm is not None else x)
    return torch.tanh(F.pixel_shuffle(self.parts["out"](x), 2))


class Discriminator(FlaxNamed):
  """jaxgen's Discriminator: per stage PixelUnshuffle(2) + 3x3 conv (or a 4x4
  stride-2 conv), norm after all but the first, LeakyReLU(0.2); a dense score
  on the flattened map, + <embed(label), features> (projection), and class
  logits from a second dense head (AC-GAN). Always in training mode, as
  jaxgen runs it: batch statistics and a power iteration per call."""

  def __init__(self, image_shape: tuple[int, int, int], widths: tuple[int, ...],
               norm: str, spectral_norm: bool, downsample: str,
               num_classes: int, aux_classes: int):
    super().__init__()
    height, width, prev = image_shape
    conv_cls, linear_cls = ((SNConv2d, SNLinear) if spectral_norm
                            else (nn.Conv2d, nn.Linear))
    self.space_to_depth = downsample == "space_to_depth"
    self.stages = []
    for i, stage in enumerate(widths):
      batch_normed = i > 0 and norm == "batch"
      if self.space_to_depth:
        conv = self.add_layer(
            "Conv", conv_cls(4 * prev, stage, 3, padding=1),
            kernel=functools.partial(self._unshuffled_kernel, cin=prev),
            before_batch_norm=batch_normed)
      else:
        conv = self.add_layer("Conv", conv_cls(prev, stage, 4, stride=2, padding=1),
                              kernel=conv_kernel, before_batch_norm=batch_normed)
      normalize = self.add_norm(norm, stage) if i > 0 else None
      self.stages.append((conv, normalize))
      prev, height, width = stage, height // 2, width // 2
    features_hwc = (height, width, prev)
    features = int(np.prod(features_hwc))
    from_map = lambda k: hwc_to_chw(k, 0, features_hwc).T
    # A plain dict: the layers are registered once, by Flax name.
    self.heads = {"score": self.add_layer("Dense", linear_cls(features, 1),
                                          kernel=from_map),
                  "embed": None, "aux": None}
    if num_classes:  # a table, not a map: never spectrally normalized
      name = self._next("Embed")
      embed = nn.Embedding(num_classes, features)
      nn.init.normal_(embed.weight, 0.0, 0.02)
      self.add_module(name, embed)
      self.heads["embed"] = embed
      self.slots[f"params/{name}/embedding"] = (
          f"{name}.weight", lambda e: hwc_to_chw(e, 1, features_hwc))
    if aux_classes:
      self.heads["aux"] = self.add_layer("Dense", linear_cls(features, aux_classes),
                                         kernel=from_map)
    self.sn_layers = [m for m in self.modules() if isinstance(m, SpectralNormed)]

  @staticmethod
  def _unshuffled_kernel(k: np.ndarray, cin: int) -> np.ndarray:
    # space_to_depth's input channels (row, col, c) -> PixelUnshuffle's (c, row, col).
    return conv_kernel(hwc_to_chw(k, 2, (2, 2, cin)))

  def forward(self, x: torch.Tensor, labels_B: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scores [B], class logits [B, K] or None)."""
    for conv, normalize in self.stages:
      x = conv(F.pixel_unshuffle(x, 2) if self.space_to_depth else x)
      x = F.leaky_relu(normalize(x) if normalize is not None else x, 0.2)
    h_BF = x.flatten(1)
    score_B = self.heads["score"](h_BF)[:, 0]
    if self.heads["embed"] is not None:
      score_B = score_B + (self.heads["embed"](labels_B) * h_BF).sum(-1)
    aux = self.heads["aux"]
    return score_B, (aux(h_BF) if aux is not None else None)


# --- losses --------------------------------------------------------------------


def disc_loss_terms(loss: str, real_B: torch.Tensor, fake_B: torch.Tensor
                    ) -> torch.Tensor:
  """jaxgen's per-example D loss from raw scores (without the GP term)."""
  if loss == "nonsaturating":
    return F.softplus(-real_B) + F.softplus(fake_B)
  if loss == "hinge":
    return F.relu(1.0 - real_B) + F.relu(1.0 + fake_B)
  return fake_B - real_B


def gen_loss_terms(loss: str, fake_B: torch.Tensor) -> torch.Tensor:
  return F.softplus(-fake_B) if loss == "nonsaturating" else -fake_B


def class_correct(logits_BK: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
  return (logits_BK.argmax(-1) == labels_B).to(logits_BK.dtype)


def disc_optimizer_config(config: Any) -> Any:
  """jaxgen's D optimizer settings: `optimizer`, at `model.disc_learning_rate`
  when set (TTUR)."""
  cfg = config.optimizer.copy_and_resolve_references()
  if config.model.disc_learning_rate:
    cfg.learning_rate = config.model.disc_learning_rate
  return cfg


def set_update_stats(net: nn.Module, update: bool) -> None:
  for module in net.modules():
    if isinstance(module, torch_vae.FlaxBatchNorm2d):
      module.update_stats = update


class GANTwin:
  """Generator, discriminator, their optimizers, the EMA generator, the train
  step and sample() of one GAN config."""

  def __init__(self, config: Any, image_shape: tuple[int, int, int],
               num_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32,
               schedule_fns: tuple[Callable[[int], float], Callable[[int], float]]
               | None = None, device: str = "cpu", compile_nets: bool = False):
    """schedule_fns: (G's, D's) learning rate by update count; default
    jaxgen's schedules of the config (D's over num_steps * disc_steps
    updates). compile_nets: G and D through torch.compile (losses, optimizers,
    EMA and sampling stay eager)."""
    require_supported(config)
    torch.manual_seed(seed)
    m = config.model
    self.m = m
    self.num_classes = num_classes
    self.conditional = bool(m.conditional)
    self.aux_weight = float(m.aux_classifier_weight)
    self.latent_dim, self.disc_steps = int(m.latent_dim), int(m.disc_steps)
    self.ema_decay, self.ema_start = float(m.ema_decay), int(m.ema_start)
    self.standing_batch = (int(m.standing_stats_batch)
                           if self.ema_decay and m.gen_norm == "batch" else 0)
    self.device, self.dtype = torch.device(device), dtype
    extra = num_classes if self.conditional else 0
    self.gen = Generator(image_shape, self.latent_dim + extra, tuple(m.gen_widths),
                         m.gen_norm).to(device, dtype)
    self.disc = Discriminator(image_shape, tuple(m.disc_widths), m.disc_norm,
                              bool(m.spectral_norm), m.downsample, extra,
                              num_classes if self.aux_weight else 0).to(device, dtype)
    self.ema = None
    if self.ema_decay:
      self.ema = copy.deepcopy(self.gen).requires_grad_(False)
      for module in self.ema.modules():  # only standing statistics write these
        if isinstance(module, torch_vae.FlaxBatchNorm2d):
          module.momentum = 1.0
    self.gen_params = list(self.gen.parameters())
    self.disc_params = list(self.disc.parameters())
    num_steps = config.train.num_steps
    disc_cfg = disc_optimizer_config(config)
    if schedule_fns is None:
      schedule_fns = (
          functools.partial(torch_vae.learning_rate, config.optimizer, num_steps),
          functools.partial(torch_vae.learning_rate, disc_cfg,
                            num_steps * self.disc_steps))
    self.gen_opt, self.gen_schedule = torch_vae.make_optimizer(
        config.optimizer, self.gen_params, schedule_fns[0])
    self.disc_opt, self.disc_schedule = torch_vae.make_optimizer(
        disc_cfg, self.disc_params, schedule_fns[1])
    self.grad_clip_norm = float(config.optimizer.grad_clip_norm)
    self.gen_fwd = torch.compile(self.gen) if compile_nets else self.gen
    self.disc_fwd = torch.compile(self.disc) if compile_nets else self.disc
    self.step = 0

  def _generate(self, net: nn.Module, z_BL: torch.Tensor,
                labels_B: torch.Tensor | None) -> torch.Tensor:
    if self.conditional:
      z_BL = torch.cat([z_BL, F.one_hot(labels_B.long(), self.num_classes).to(z_BL.dtype)], -1)
    return net(z_BL)

  def _score(self, x: torch.Tensor, labels_B: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    return self.disc_fwd(x, labels_B if self.conditional else None)

  def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor,
                        e_B: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """jaxgen's gradient_penalty; its critic call keeps no spectral-norm u."""
    mixed = (e_B * real + (1.0 - e_B) * fake).requires_grad_(True)
    for layer in self.disc.sn_layers:
      layer.update_u = False
    try:
      score_B = self._score(mixed, labels_B)[0]
    finally:
      for layer in self.disc.sn_layers:
        layer.update_u = True
    grads, = torch.autograd.grad(score_B.sum(), mixed, create_graph=True)
    norm_B = torch.sqrt(grads.square().sum((1, 2, 3)) + 1e-12)
    return (norm_B - 1.0).square()

  def disc_backward(self, real: torch.Tensor, labels_B: torch.Tensor,
                    z_BL: torch.Tensor, e_B: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
    """One D update's loss and gradients (into D's .grad) on real images in
    [-1, 1], fakes of z and, for WGAN-GP, mixing weights e [B, 1, 1, 1];
    metrics as jaxgen's disc_update names them, as tensors (no host sync)."""
    with torch.no_grad():
      set_update_stats(self.gen, False)
      fake = self._generate(self.gen_fwd, z_BL, labels_B)
      set_update_stats(self.gen, True)
    real_B, real_logits = self._score(real, labels_B)
    fake_B, _ = self._score(fake, labels_B)
    per_example = disc_loss_terms(self.m.loss, real_B, fake_B)
    aux = {"d_real": real_B, "d_fake": fake_B}
    if self.aux_weight:
      class_B = F.cross_entropy(real_logits, labels_B.long(), reduction="none")
      per_example = per_example + self.aux_weight * class_B
      aux["d_class_loss_real"] = class_B
      aux["d_class_acc_real"] = class_correct(real_logits, labels_B)
    if self.m.loss == "wgan_gp":
      gp_B = self._gradient_penalty(real, fake, e_B, labels_B)
      per_example = per_example + float(self.m.gp_weight) * gp_B
      aux["gradient_penalty"] = gp_B
    loss = per_example.mean()
    self.disc_opt.zero_grad(set_to_none=True)
    loss.backward(inputs=self.disc_params)
    return {"disc_loss": loss.detach(),
            "disc_grad_norm": torch_vae.global_grad_norm(self.disc_params),
            **{k: v.detach().mean() for k, v in aux.items()}}

  def gen_backward(self, labels_B: torch.Tensor, z_BL: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """The G update's loss and gradients (into G's .grad only); metrics as
    jaxgen's gen_update names them."""
    fake_B, fake_logits = self._score(self._generate(self.gen_fwd, z_BL, labels_B),
                                      labels_B)
    per_example = gen_loss_terms(self.m.loss, fake_B)
    aux = {}
    if self.aux_weight:
      class_B = F.cross_entropy(fake_logits, labels_B.long(), reduction="none")
      per_example = per_example + self.aux_weight * class_B
      aux = {"g_class_loss_fake": class_B.detach().mean(),
             "d_class_acc_fake": class_correct(fake_logits.detach(), labels_B).mean()}
    loss = per_example.mean()
    self.gen_opt.zero_grad(set_to_none=True)
    loss.backward(inputs=self.gen_params)
    return {"gen_loss": loss.detach(),
            "gen_grad_norm": torch_vae.global_grad_norm(self.gen_params), **aux}

  def _apply(self, opt: torch.optim.Optimizer, schedule: Any,
             params: list[torch.Tensor], norm: torch.Tensor) -> None:
    torch_vae.clip_and_step(params, opt, schedule, self.grad_clip_norm, norm)

  @torch.no_grad()
  def _update_ema(self) -> None:
    if self.ema is None:
      return
    decay = 0.0 if self.step < self.ema_start else self.ema_decay
    ema = list(self.ema.parameters())
    torch._foreach_mul_(ema, decay)  # pylint: disable=protected-access
    torch._foreach_add_(ema, self.gen_params, alpha=1.0 - decay)  # pylint: disable=protected-access

  def step_with(self, real: torch.Tensor, labels_B: torch.Tensor,
                disc_noise: list[tuple[torch.Tensor, torch.Tensor | None]],
                gen_z: torch.Tensor,
                inspect: Callable[[str, int], None] | None = None
                ) -> dict[str, torch.Tensor]:
    """jaxgen's train_step on real images in [-1, 1] with given noise: a
    (z, e) per D update, G's z. inspect(net, index) sees each update's
    gradients before its optimizer step. Returns jaxgen's metrics."""
    share = real.shape[0] // self.disc_steps
    d_metrics = []
    for i, (z_BL, e_B) in enumerate(disc_noise):
      part = slice(i * share, (i + 1) * share)
      metrics = self.disc_backward(real[part], labels_B[part], z_BL, e_B)
      if inspect:
        inspect("discriminator", i)
      self._apply(self.disc_opt, self.disc_schedule, self.disc_params,
                  metrics["disc_grad_norm"])
      d_metrics.append(metrics)
    # G's labels: the last D share's, as jaxgen's.
    g_metrics = self.gen_backward(labels_B[-share:], gen_z)
    if inspect:
      inspect("generator", 0)
    self._apply(self.gen_opt, self.gen_schedule, self.gen_params,
                g_metrics["gen_grad_norm"])
    self._update_ema()
    self.step += 1
    out = {k: torch.stack([d[k] for d in d_metrics]).mean() for k in d_metrics[0]}
    if self.m.loss == "nonsaturating":  # D's probabilities, as jaxgen reports them
      for k in ("d_real", "d_fake"):
        out[k] = torch.stack([torch.sigmoid(d[k]) for d in d_metrics]).mean()
    return {**out, **g_metrics}

  def train_step(self, images_u8_BCHW: torch.Tensor, labels_B: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """jaxgen's train_step: fresh latents (and mixing weights) each update."""
    real = (images_u8_BCHW.float() / 127.5 - 1.0).to(self.dtype)
    share = real.shape[0] // self.disc_steps
    kw = {"dtype": self.dtype, "device": real.device}
    noise = [(torch.randn(share, self.latent_dim, **kw),
              torch.rand(share, 1, 1, 1, **kw) if self.m.loss == "wgan_gp" else None)
             for _ in range(self.disc_steps)]
    return self.step_with(real, labels_B, noise, torch.randn(share, self.latent_dim, **kw))

  @torch.no_grad()
  def generate(self, z_BL: torch.Tensor, labels_B: torch.Tensor | None = None,
               standing_z: torch.Tensor | None = None) -> torch.Tensor:
    """jaxgen's generate_images: G(z) in [0, 1] (NCHW) in eval mode, from the
    EMA weights when the config has an EMA, normalized by standing statistics
    of standing_z (labels 0, 1, ..., 9, 0, ...) or by the live G's running
    statistics."""
    if self.ema is None:
      net = self.gen
    else:
      net = self.ema
      if self.standing_batch:
        labels = torch.arange(len(standing_z), device=standing_z.device) % self.num_classes
        net.train()
        self._generate(net, standing_z, labels)
      else:
        for ours, live in zip(net.buffers(), self.gen.buffers()):
          ours.copy_(live)
    net.eval()
    x = self._generate(net, z_BL, labels_B)
    net.train()
    return (x + 1.0) / 2.0

  def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """jaxgen's sample(): z ~ N(0, I), labels 0, 1, ..., 9, 0, ... when
    conditional, fresh standing-statistics noise per call; NCHW in [0, 1]."""
    # On the model's device, as jaxgen draws them, unless a seeded (CPU)
    # generator is given.
    kw = {"dtype": self.dtype, "generator": generator,
          "device": generator.device if generator is not None else self.device}
    z = torch.randn(num, self.latent_dim, **kw).to(self.device)
    standing_z = (torch.randn(self.standing_batch, self.latent_dim, **kw).to(self.device)
                  if self.standing_batch else None)
    labels = (torch.arange(num, device=self.device) % self.num_classes
              if self.conditional else None)
    return self.generate(z, labels, standing_z)

  def sample_uint8(self, num: int, seed: int, chunk: int = 1000) -> np.ndarray:
    """uint8 NHWC samples for jaxgen's --mode=score."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num, chunk):
      x = self.sample(min(chunk, num - start), generator)
      out.append(np.round(x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255
                          ).astype(np.uint8))
    return np.concatenate(out)


# --- the equivalence check -------------------------------------------------------


def flax_paths(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """{"params/Conv_0/kernel": array} of a nested dict; spectral norm's stored
  sigma is left out: jaxgen never reads it (every call recomputes it)."""
  out = {}
  for key, child in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    if hasattr(child, "items"):
      out.update(flax_paths(child, path))
    elif not path.endswith("/sigma"):
      out[path] = np.asarray(child)
  return out


def jaxgen_variables(state: Any, net: str) -> dict[str, np.ndarray]:
  return flax_paths({"params": state.params[net], **state.stats[net]})


def twin_refs(net: FlaxNamed, leaves: dict[str, np.ndarray], dtype: torch.dtype
              ) -> dict[str, torch.Tensor]:
  """jaxgen's arrays of `leaves` in the twin's layout, by variable path."""
  return {path: torch.tensor(np.ascontiguousarray(net.slots[path][1](value)), dtype=dtype)
          for path, value in leaves.items()}


def load_flax_state(twin: GANTwin, state: Any) -> None:
  """jaxgen's params and statistics into G and D, its EMA params into the
  EMA generator; every variable on each side must have its counterpart."""
  pairs = [(twin.gen, jaxgen_variables(state, "generator")),
           (twin.disc, jaxgen_variables(state, "discriminator"))]
  if twin.ema is not None:
    pairs.append((twin.ema, flax_paths({"params": state.ema_params})))
  with torch.no_grad():
    for net, leaves in pairs:
      ours = net.tensors()
      if net is twin.ema:
        ours = {p: t for p, t in ours.items() if p.startswith("params/")}
      if set(leaves) != set(ours):
        raise ValueError(f"variables differ: jaxgen only {sorted(set(leaves) - set(ours))}, "
                         f"twin only {sorted(set(ours) - set(leaves))}")
      for path, ref in twin_refs(net, leaves, twin.dtype).items():
        ours[path].copy_(ref)


def compare(net: FlaxNamed, leaves: dict[str, np.ndarray], dtype: torch.dtype,
            of_grads: bool = False) -> tuple[float, float]:
  """(max abs difference, max of abs difference / the reference's max abs)
  between `leaves` (jaxgen's) and the same variables of the twin's `net`
  (their .grad with of_grads), as torch_vae.max_tensor_diffs; a variable in
  net.scale_of is divided by the other variable's max abs instead."""
  refs, ours = twin_refs(net, leaves, dtype), net.tensors()
  max_abs, max_rel = 0.0, 0.0
  for path, ref in refs.items():
    value = (ours[path].grad if of_grads else ours[path]).detach()
    diff = float((value - ref).abs().max())
    scale = refs[net.scale_of[path]] if path in net.scale_of else ref
    max_abs = max(max_abs, diff)
    max_rel = max(max_rel, diff / max(float(scale.abs().max()), 1e-30))
  return max_abs, max_rel


def jaxgen_update_draws(gan_steps: Any, config: Any, batch: dict[str, Any],
                        state: Any, key: Any) -> dict[str, Any]:
  """What jaxgen's train_step draws from its key, and the gradient of each of
  its updates (jax.grad of the loss disc_update / gen_update report, through
  their own code), walking the updates as train_step does. Jit it with the
  batch as an argument, as train_step's: a batch closed over is constant-
  folded, by a true division, into pixels an ulp apart from the step's."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen.models import gan  # pylint: disable=g-import-not-at-top
  m = config.model
  real = gan.to_tanh_range(batch["image"])
  labels = batch["label"]
  share = real.shape[0] // m.disc_steps
  d_keys = jax.random.split(jax.random.fold_in(key, 0), m.disc_steps)
  carry = (state.params, state.stats, state.opt_state)
  out = {"disc_grads": [], "disc_z": [], "disc_e": []}
  for i in range(m.disc_steps):
    inputs = (real[i * share:(i + 1) * share], labels[i * share:(i + 1) * share],
              d_keys[i])

    def disc_loss(d_params, carry=carry, inputs=inputs):
      params = {**carry[0], "discriminator": d_params}
      return gan_steps.disc_update((params, *carry[1:]), inputs)[1]["disc_loss"]

    out["disc_grads"].append(jax.grad(disc_loss)(carry[0]["discriminator"]))
    z_key, gp_key = jax.random.split(d_keys[i])
    out["disc_z"].append(jax.random.normal(z_key, (share, m.latent_dim)))
    out["disc_e"].append(jax.random.uniform(gp_key, (share, 1, 1, 1)))
    carry, _ = gan_steps.disc_update(carry, inputs)
  params, stats, opt_state = carry
  g_key = jax.random.fold_in(key, 1)
  out["gen_grads"] = jax.grad(lambda g: gan_steps.gen_update(
      {**params, "generator": g}, stats, opt_state, labels[-share:], g_key
  )[3]["gen_loss"])(params["generator"])
  out["gen_z"] = jax.random.normal(g_key, (share, m.latent_dim))
  return out


def jaxgen_sample_draws(config: Any, standing_batch: int, num: int, key: Any
                        ) -> tuple[Any, Any]:
  """The latents and standing-statistics latents jaxgen's sample() draws."""
  import jax  # pylint: disable=g-import-not-at-top
  z_key, stats_key = jax.random.split(key) if standing_batch else (key, key)
  z = jax.random.normal(z_key, (num, config.model.latent_dim))
  return z, jax.random.normal(stats_key, (max(standing_batch, 1), config.model.latent_dim))


def check(config: Any, steps: int = 3, seed: int = 0, tol: float = 1e-4,
          dtype: str = "float64", num_samples: int = 20) -> dict[str, float]:
  """Twin vs jaxgen on one batch for `steps` train steps with jaxgen's noise
  injected. Returns the max differences; raises AssertionError when a
  relative difference exceeds `tol`.

  Compared: the twin's G and D learning-rate schedules against jaxgen's over
  all of training (relative to the peak); at each step every metric of
  jaxgen's train_step, and the gradients of every D update and of the G
  update (each at the state that update starts from); after the steps every
  param, every statistic (batch-norm running means and variances, spectral
  norm's u) and every EMA param; then `num_samples` images of sample() for
  jaxgen's latents (and standing-statistics latents) from one key. In the
  steps the twin takes jaxgen's jitted learning rates (optax evaluates the
  schedule in float32; see torch_vae.check). jaxgen's pixels in [-1, 1] are
  float32 even under x64, so the twin gets the same float32 values.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import data, optim  # pylint: disable=g-import-not-at-top
  from jaxgen.models import gan  # pylint: disable=g-import-not-at-top

  jnp = jax.numpy
  torch_dtype = getattr(torch, dtype)
  m = config.model
  with jax.enable_x64(dtype == "float64"):
    spec = data.SPECS[config.data.name]
    gan_steps = gan.make_steps(config, spec)
    family = gan_steps.family
    batch = torch_vae.random_batch(spec, config.train.batch_size, seed)
    state, step_fn, _ = torch_vae.jaxgen_step_in(family, batch, seed, dtype)
    num_steps = config.train.num_steps
    disc_cfg = disc_optimizer_config(config)
    result = {"lr_abs": 0.0, "lr_rel": 0.0}
    jitted = []
    for cfg, updates in ((config.optimizer, num_steps),
                         (disc_cfg, num_steps * m.disc_steps)):
      schedule = optim.learning_rate_schedule(cfg, updates)
      every = np.arange(updates + 1)
      ours = np.array([torch_vae.learning_rate(cfg, updates, t) for t in every.tolist()])
      diff = float(np.abs(ours - np.asarray(schedule(jnp.asarray(every, jnp.int32)))).max())
      torch_vae.record_max(result, "lr", diff, diff / cfg.learning_rate)
      jitted.append(jax.jit(schedule))
    twin = GANTwin(config, spec.image_shape, spec.num_classes, seed, torch_dtype,
                   tuple(lambda t, s=s: float(s(jnp.int32(t))) for s in jitted))
    load_flax_state(twin, state)
    draws = jax.jit(functools.partial(jaxgen_update_draws, gan_steps, config))
    to_torch = lambda a: torch.tensor(np.asarray(a), dtype=torch_dtype)
    # jaxgen's float32 pixels as XLA computes them: fma(x, float32(1 / 127.5),
    # -1), rounded once, not x / 127.5 - 1 (numpy) nor torch's rounding.
    real = torch.from_numpy(np.array(jax.jit(gan.to_tanh_range)(batch["image"]))
                            ).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(batch["label"].astype(np.int64))
    for i in range(steps):
      key = jax.random.PRNGKey(seed + 1 + i)
      drawn = draws(batch, state, key)
      net_of = {"discriminator": twin.disc, "generator": twin.gen}

      def inspect(net: str, index: int, drawn=drawn) -> None:
        grads = (drawn["disc_grads"][index] if net == "discriminator"
                 else drawn["gen_grads"])
        torch_vae.record_max(result, "grad", *compare(
            net_of[net], flax_paths({"params": grads}), torch_dtype, of_grads=True))

      noise = [(to_torch(z), to_torch(e)) for z, e in zip(drawn["disc_z"], drawn["disc_e"])]
      ours = twin.step_with(real.to(torch_dtype), labels, noise, to_torch(drawn["gen_z"]),
                            inspect)
      state, metrics = step_fn(state, batch, key)
      torch_vae.record_metric_diffs(result, ours, metrics)
    for kind, net_name, net in (("param", "generator", twin.gen),
                                ("param", "discriminator", twin.disc)):
      leaves = jaxgen_variables(state, net_name)
      params = {p: v for p, v in leaves.items() if p.startswith("params/")}
      stats = {p: v for p, v in leaves.items() if not p.startswith("params/")}
      torch_vae.record_max(result, kind, *compare(net, params, torch_dtype))
      torch_vae.record_max(result, "stat", *compare(net, stats, torch_dtype))
    result.setdefault("stat_abs", 0.0)
    result.setdefault("stat_rel", 0.0)
    result["ema_abs"], result["ema_rel"] = (
        compare(twin.ema, flax_paths({"params": state.ema_params}), torch_dtype)
        if twin.ema is not None else (0.0, 0.0))
    sample_key = jax.random.PRNGKey(seed + 100)
    z, standing_z = jax.jit(functools.partial(
        jaxgen_sample_draws, config, twin.standing_batch, num_samples))(sample_key)
    theirs = jax.jit(lambda s, k: family.sample(s, k, num_samples))(state, sample_key)
    sample_labels = (torch.arange(num_samples) % spec.num_classes
                     if twin.conditional else None)
    images = twin.generate(to_torch(z), sample_labels,
                           to_torch(standing_z) if twin.standing_batch else None)
    ref = torch.tensor(np.asarray(theirs), dtype=torch_dtype).permute(0, 3, 1, 2)
    result["sample_abs"] = float((images - ref).abs().max())
    result["sample_rel"] = result["sample_abs"] / float(ref.abs().max())
    result["disc_loss"] = float(metrics["disc_loss"])
    result["gen_loss"] = float(metrics["gen_loss"])
    result["ema_steps"] = max(0, steps - m.ema_start) if twin.ema is not None else 0
  torch_vae.assert_within(result, ("lr", "metric", "grad", "param", "stat", "ema",
                                   "sample"), tol)
  return result


def check_main(argv: list[str]) -> None:
  parser = torch_vae.check_arg_parser(
      __doc__, ",".join([f"{name}:smoke" for name in COVERED] + list(COVERED)),
      "model.ema_start=1")
  parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
  args = parser.parse_args(argv)
  for name in args.config.split(","):
    start = time.perf_counter()
    r = check(torch_vae.get_config(name, args.set), args.steps, tol=args.tol,
              dtype=args.dtype)
    print(f"{name} ({args.dtype}): OK over {args.steps} steps (disc_loss "
          f"{r['disc_loss']:.4f}, gen_loss {r['gen_loss']:.4f}; EMA averaging in "
          f"{r['ema_steps']} of them); max abs (relative) differences: "
          + torch_vae.diffs_text(r, (("lr schedules", "lr"), *torch_vae.STEP_DIFFS,
                                     ("statistics", "stat"), ("EMA params", "ema"),
                                     ("samples", "sample")))
          + f" [{time.perf_counter() - start:.0f}s]", flush=True)


# --- training for a wall-clock budget ---------------------------------------------


def load_train_split(dataset: str) -> tuple[np.ndarray, np.ndarray]:
  """The training images (uint8 NHWC) and labels, through jaxgen's loader."""
  from jaxgen import data  # pylint: disable=g-import-not-at-top
  split = data.load(dataset).train
  return np.asarray(split.images), np.asarray(split.labels)


def train_main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=["mnist", "cifar10"], default="mnist",
                      help="trains configs/dcgan_<dataset>.py's twin")
  parser.add_argument("--config", default=None,
                      help="a GAN config name instead (e.g. sngan_cifar10)")
  parser.add_argument("--seconds", type=float, default=900.0,
                      help="wall-clock training budget")
  parser.add_argument("--max_steps", type=int, default=10 ** 9)
  parser.add_argument("--num_samples", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  from jaxgen import data  # pylint: disable=g-import-not-at-top
  config = torch_vae.get_config(args.config or f"dcgan_{args.dataset}")
  spec = data.SPECS[config.data.name]
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  images, labels = load_train_split(config.data.name)
  images_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  labels_all = torch.from_numpy(labels.astype(np.int64))
  model = GANTwin(config, spec.image_shape, spec.num_classes, args.seed)
  batch_size = config.train.batch_size
  rng = np.random.default_rng(args.seed)
  order, cursor, step, log = rng.permutation(len(images)), 0, 0, []
  start = time.perf_counter()
  while time.perf_counter() - start < args.seconds and step < args.max_steps:
    if cursor + batch_size > len(order):
      order, cursor = rng.permutation(len(images)), 0
    index = torch.from_numpy(order[cursor:cursor + batch_size])
    cursor += batch_size
    metrics = model.train_step(images_all[index], labels_all[index])
    step += 1
    if step % 100 == 0:
      log.append({"step": step, "seconds": round(time.perf_counter() - start, 2),
                  **{k: float(v) for k, v in metrics.items()}})
  seconds = time.perf_counter() - start
  samples = model.sample_uint8(args.num_samples, seed=args.seed + 1)
  np.savez_compressed(out / f"samples_{args.num_samples}.npz", images=samples, step=step)
  name = args.config or f"dcgan_{args.dataset}"
  summary = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
             "config": name, "dataset": config.data.name, "steps": step,
             "wall_seconds": round(seconds, 2),
             "steps_per_second": round(step / seconds, 3), "log": log}
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"torch twin of {name}: {step} steps in {seconds:.0f}s "
        f"({step / seconds:.2f} steps/s) -> {out}")


def main() -> None:
  argv = sys.argv[1:]
  if argv[:1] == ["check"]:
    check_main(argv)
  else:
    train_main(argv)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
