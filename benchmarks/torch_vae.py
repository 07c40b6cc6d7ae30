"""The PyTorch twin of jaxgen's autoencoders (configs/ae_mnist.py, vae_mnist.py,
cvae_mnist.py), built from the jaxgen config object.

The same networks (jaxgen/nets/conv.py: [x, one-hot label] * 2 - 1 -> strided
3x3 convs with Flax's "SAME" padding -> dense -> code; [z, one-hot label] ->
two dense layers -> sub-pixel upsampling stages -> logits; ReLU; optional
residual blocks; LeCun-normal weights, zero biases), the same loss (Bernoulli
or fixed-std Gaussian likelihood summed over pixels, plus beta * KL with the
linear warm-up for the VAE; reconstruction alone for the AE; mean over the
batch), the same data noise (dynamic binarization drawn each step, one
posterior sample per image) and the same optimizer (jaxgen/optim.py: Adam,
AdamW or SGD with the config's lr, betas, eps, weight decay, global-norm
clipping, and its warm-up + cosine schedule as a LambdaLR). Tensors are NCHW.
Not covered (a ValueError says so): latent maps (`model.latent_channels`) and
the discretized logistic likelihood of the CIFAR-10 configs.

The equivalence check (`check`, below) copies jaxgen's initial params into the
twin, gives it the binarized pixels and posterior noise that jaxgen's
train_step draws from its key, and compares, for `--steps` train steps of one
batch, both sides in float64: the learning-rate schedule, the loss and
metrics, the gradients of the loss (jax.grad through jaxgen's own
train_step), and the params after the steps. Each prints its max abs and
relative difference and must stay under `--tol` (1e-4):

    python benchmarks/torch_vae.py check                       # the 3 configs
    python benchmarks/torch_vae.py check --config=vae_mnist
    python benchmarks/torch_vae.py check --config=cvae_mnist --set model.res_blocks=1
    python benchmarks/torch_vae.py check --dtype=float32 --steps=1 --tol=1    # look only

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
CONV, CONV_TO_SHUFFLE, DENSE, DENSE_FROM_MAP, DENSE_TO_MAP = (
    "conv", "conv_to_shuffle", "dense", "dense_from_map", "dense_to_map")


def require_supported(config: Any) -> None:
  """Raises ValueError for autoencoder settings the twin does not build."""
  m = config.model
  if m.family not in ("ae", "vae"):
    raise ValueError(f"model.family={m.family!r}: the twin covers 'ae' and 'vae'")
  if m.latent_channels:
    raise ValueError("model.latent_channels > 0 (a latent map): not in the twin")
  if m.likelihood not in ("bernoulli", "gaussian"):
    raise ValueError(f"model.likelihood={m.likelihood!r}: the twin has "
                     "'bernoulli' and 'gaussian'")


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
  """jaxgen's ConvEncoder (vector code): images in [0, 1] -> num_outputs."""

  def __init__(self, image_hw: tuple[int, int], in_channels: int,
               widths: tuple[int, ...], hidden: int, num_outputs: int,
               res_blocks: int):
    super().__init__()
    layers, prev = [], in_channels
    for width in widths:
      layers += [self._name("Conv", SameConv2d(prev, width, stride=2), CONV),
                 nn.ReLU()]
      layers += [self._name("ResBlock", ResBlock(width)) for _ in range(res_blocks)]
      prev = width
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
    return self.layers(x01_BCHW * 2.0 - 1.0)


class Decoder(_FlaxNamed):
  """jaxgen's ConvDecoder (vector latent): [z, cond] -> per-pixel outputs,
  upsampled by 3x3 convs to 4x the channels + PixelShuffle(2)."""

  def __init__(self, image_shape: tuple[int, int, int], in_features: int,
               widths: tuple[int, ...], hidden: int, out_channels: int,
               res_blocks: int):
    super().__init__()
    height, width, _ = image_shape
    factor = 2 ** len(widths)
    if height % factor or width % factor:
      raise ValueError(f"image {height}x{width} is not divisible by {factor}")
    coarse = (widths[0], height // factor, width // factor)
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

  def forward(self, z_BL: torch.Tensor) -> torch.Tensor:
    return self.layers(z_BL)


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


def clip_by_global_norm_(grads: list[torch.Tensor], max_norm: float,
                         norm: torch.Tensor) -> None:
  """optax.clip_by_global_norm in place: grads * max_norm / norm when norm >=
  max_norm (torch's clip_grad_norm_ adds 1e-6 to the norm)."""
  scale = torch.where(norm < max_norm, torch.ones_like(norm), max_norm / norm)
  torch._foreach_mul_(grads, scale)  # pylint: disable=protected-access


def bernoulli_nll_nats(logits: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
  return F.binary_cross_entropy_with_logits(logits, x01, reduction="none").sum((1, 2, 3))


def gaussian_nll_nats(mean: torch.Tensor, x01: torch.Tensor, std: float
                      ) -> torch.Tensor:
  z = (x01 - mean) / std
  return (0.5 * z * z + math.log(std) + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))


def gaussian_kl_nats(mean_BL: torch.Tensor, logvar_BL: torch.Tensor) -> torch.Tensor:
  return 0.5 * torch.sum(logvar_BL.exp() + mean_BL ** 2 - 1.0 - logvar_BL, -1)


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
    self.conditional = bool(m.conditional)
    self.num_classes = num_classes
    self.latent_dim = m.latent_dim
    self.dynamic = config.data.binarize == "dynamic"
    self.grad_clip_norm = float(config.optimizer.grad_clip_norm)
    extra = num_classes if self.conditional else 0
    std = float(m.gaussian_std)
    self.bernoulli = m.likelihood == "bernoulli"
    self.nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
        bernoulli_nll_nats if self.bernoulli
        else lambda out, x01: gaussian_nll_nats(out, x01, std))
    self.encoder = Encoder(image_shape[:2], image_shape[2] + extra,
                           tuple(m.encoder_widths), m.hidden,
                           (2 if self.variational else 1) * m.latent_dim, m.res_blocks)
    self.decoder = Decoder(image_shape, m.latent_dim + extra,
                           tuple(m.decoder_widths), m.hidden, image_shape[2],
                           m.res_blocks)
    self.encoder.to(device, dtype)
    self.decoder.to(device, dtype)
    self.params = [*self.encoder.parameters(), *self.decoder.parameters()]
    if compile_nets:
      self.encoder, self.decoder = torch.compile(self.encoder), torch.compile(self.decoder)
    if schedule_fn is None:
      schedule_fn = lambda step: learning_rate(config.optimizer,
                                               config.train.num_steps, step)
    self.opt, self.schedule = make_optimizer(config.optimizer, self.params,
                                             schedule_fn)
    self.step = 0

  def to_pixels(self, images_u8_BCHW: torch.Tensor) -> torch.Tensor:
    x = images_u8_BCHW.to(self.params[0].dtype) / 255.0
    return torch.bernoulli(x) if self.dynamic else x

  def loss_terms(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
                 eps_BL: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, batch-mean metrics) of pixels x01 and posterior noise eps."""
    enc_in, onehot = x01_BCHW, None
    if self.conditional:  # the label as constant extra input channels
      onehot = F.one_hot(labels_B.long(), self.num_classes).to(x01_BCHW.dtype)
      b, _, h, w = x01_BCHW.shape
      enc_in = torch.cat([x01_BCHW, onehot[:, :, None, None].expand(b, -1, h, w)], 1)
    code = self.encoder(enc_in)
    if self.variational:
      mean_BL, logvar_BL = code.chunk(2, -1)
      z_BL = mean_BL + torch.exp(0.5 * logvar_BL) * eps_BL
    else:
      z_BL = code
    out = self.decoder(z_BL if onehot is None else torch.cat([z_BL, onehot], -1))
    recon = self.nll(out, x01_BCHW)
    if not self.variational:
      loss = recon.mean()
      return loss, {"loss": loss, "recon_nats": loss}
    kl = gaussian_kl_nats(mean_BL, logvar_BL)
    kl_weight = self.beta
    if self.kl_warmup_steps:
      kl_weight = self.beta * min(1.0, self.step / self.kl_warmup_steps)
    loss = torch.mean(recon + kl_weight * kl)
    return loss, {"loss": loss, "neg_elbo_nats": (recon + kl).mean(),
                  "recon_nats": recon.mean(), "kl_nats": kl.mean()}

  def backward(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
               eps_BL: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The loss's gradients into the params' .grad; metrics as tensors (no
    host sync), with grad_norm before clipping as jaxgen reports it."""
    self.opt.zero_grad(set_to_none=True)
    loss, metrics = self.loss_terms(x01_BCHW, labels_B, eps_BL)
    loss.backward()
    grads = [p.grad for p in self.params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # pylint: disable=protected-access
    return {k: v.detach() for k, v in metrics.items()} | {"grad_norm": norm}

  def apply_gradients(self, grad_norm: torch.Tensor) -> None:
    if self.grad_clip_norm:
      clip_by_global_norm_([p.grad for p in self.params], self.grad_clip_norm,
                           grad_norm)
    self.opt.step()
    self.schedule.step()
    self.step += 1

  def update(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
             eps_BL: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One optimizer step on given pixels and posterior noise."""
    metrics = self.backward(x01_BCHW, labels_B, eps_BL)
    self.apply_gradients(metrics["grad_norm"])
    return metrics

  def train_step(self, images_u8_BCHW: torch.Tensor, labels_B: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """jaxgen's train_step: fresh binarization and posterior noise, one update."""
    x01 = self.to_pixels(images_u8_BCHW)
    eps = (torch.randn(x01.shape[0], self.latent_dim, dtype=x01.dtype,
                       device=x01.device)
           if self.variational else None)
    return self.update(x01, labels_B, eps)

  @torch.no_grad()
  def sample(self, num: int) -> torch.Tensor:
    """jaxgen's VAE sample(): decoder means of z ~ N(0, I), for labels 0, 1,
    ..., 9, 0, ... when conditional; NCHW in [0, 1]."""
    p = self.params[0]
    z_BL = torch.randn(num, self.latent_dim, dtype=p.dtype, device=p.device)
    if self.conditional:
      labels = torch.arange(num, device=p.device) % self.num_classes
      z_BL = torch.cat([z_BL, F.one_hot(labels, self.num_classes).to(p.dtype)], -1)
    out = self.decoder(z_BL)
    return torch.sigmoid(out) if self.bernoulli else out.clamp(0.0, 1.0)

  def flax_layout(self) -> dict[str, tuple[nn.Module, str, tuple[int, ...]]]:
    """Flax param path ("encoder/Conv_0") -> (twin layer, layout, map shape)."""
    return {f"{net}/{name}": entry
            for net, module in (("encoder", self.encoder), ("decoder", self.decoder))
            for name, entry in module.flax_layout.items()}


def to_torch(kernel: np.ndarray, bias: np.ndarray, layout: str,
             map_hwc: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
  """A Flax layer's (kernel, bias), or their gradients, in the twin's layout.

  conv: HWIO -> OIHW. conv_to_shuffle: also reorders the output channels from
  depth_to_space's (row, col, channel) to PixelShuffle's (channel, row, col).
  dense: (in, out) -> (out, in); dense_from_map / dense_to_map: also reorder
  the flattened map side from NHWC's (h, w, c) to NCHW's (c, h, w).
  """
  kernel, bias = np.asarray(kernel), np.asarray(bias)
  if layout == CONV_TO_SHUFFLE:
    kh, kw, cin, cout = kernel.shape
    kernel = kernel.reshape(kh, kw, cin, 4, cout // 4).swapaxes(3, 4).reshape(
        kh, kw, cin, cout)
    bias = bias.reshape(4, -1).T.reshape(-1)
  if layout in (CONV, CONV_TO_SHUFFLE):
    kernel = kernel.transpose(3, 2, 0, 1)
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
  """{"encoder/Conv_0": (kernel, bias)} of jaxgen's VAE params (or grads)."""
  out = {}

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


def assert_within(result: dict[str, float], kinds: tuple[str, ...], tol: float
                  ) -> None:
  for kind in kinds:
    assert result[f"{kind}_rel"] <= tol, (
        f"{kind}s differ: max relative difference {result[f'{kind}_rel']:.2e} > {tol}")


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
  kl_warmup_steps) and its 8-bit pixels with data.binarize="none" are float32
  too: with those settings expect ~1e-7 differences in the loss and up to
  ~1e-4 in params after a few steps, for the same reason.

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

    @jax.jit
    def noise(key):
      pixel_key, eps_key = jax.random.split(key)
      x01 = (data.binarize(pixel_key, batch["image"])
             if config.data.binarize == "dynamic"
             else jnp.asarray(batch["image"], jnp.float32) / 255.0)
      return x01, jax.random.normal(eps_key, (b, config.model.latent_dim))

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
      x01, eps = (torch.tensor(np.asarray(a), dtype=getattr(torch, dtype))
                  for a in noise(key))
      ours = twin.backward(x01.permute(0, 3, 1, 2).contiguous(), labels,
                           eps if twin.variational else None)
      grad_abs, grad_rel = relative_diffs(flax_leaves(grads), twin, of_grads=True)
      twin.apply_gradients(ours["grad_norm"])
      state, metrics = step_fn(state, batch, key)
      record_metric_diffs(result, ours, metrics)
      record_max(result, "grad", grad_abs, grad_rel)
    result["param_abs"], result["param_rel"] = relative_diffs(
        flax_leaves(state.params), twin, of_grads=False)
    result["loss"] = float(metrics["loss"])
  assert_within(result, ("lr", "metric", "grad", "param"), tol)
  return result


def check_arg_parser(doc: str, default_configs: str, set_example: str
                     ) -> argparse.ArgumentParser:
  """The command line of a twin's `check` (torch_vae, torch_flow, torch_ddpm)."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("mode", choices=["check"])
  parser.add_argument("--config", default=default_configs,
                      help="comma-separated config names (name or name:smoke)")
  parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help=f"config override, e.g. {set_example}")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--tol", type=float, default=1e-4)
  return parser


def main() -> None:
  parser = check_arg_parser(__doc__, "ae_mnist,vae_mnist,cvae_mnist",
                            "model.kl_warmup_steps=2")
  parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
  args = parser.parse_args()
  for name in args.config.split(","):
    r = check(get_config(name, args.set), args.steps, tol=args.tol, dtype=args.dtype)
    print(f"{name} ({args.dtype}): OK over {args.steps} steps (loss "
          f"{r['loss']:.4f}); max abs (relative) differences: lr schedule "
          f"{r['lr_abs']:.2e} ({r['lr_rel']:.2e}), metrics {r['metric_abs']:.2e} "
          f"({r['metric_rel']:.2e}), grads {r['grad_abs']:.2e} ({r['grad_rel']:.2e}), "
          f"params after the steps {r['param_abs']:.2e} ({r['param_rel']:.2e})",
          flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
