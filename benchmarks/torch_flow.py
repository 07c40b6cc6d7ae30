"""The PyTorch twin of jaxgen's normalizing flows (configs/glow_*.py,
realnvp_*.py), built from the jaxgen config object.

The same bijections as jaxgen/nets/flow.py: actnorm with data-dependent
initialisation, the invertible 1x1 convolution (LU-decomposed or full),
affine couplings with channel or checkerboard masks and Glow's scale
sigmoid(h + 2), the 2x2 squeeze in jaxgen's channel order, the split prior;
the same plan of layers (glow / realnvp), the same objective (uniform
dequantization, "shift" or "logit" preprocessing with its log-determinant,
bits/dim of the dequantized image) and the same optimizer (Adam with
clipping and the warm-up + cosine schedule, from benchmarks/torch_vae.py).
Tensors are NCHW; channel orders match jaxgen's NHWC ones, so jaxgen's
params load into the twin unchanged but for the conv kernels' layout.

The equivalence check copies jaxgen's initial params into the twin, hands it
the dequantized pixels that jaxgen's train_step draws from its key, and
compares in float64 the loss and metrics, every gradient, and every param
after `--steps` Adam steps:

    python benchmarks/torch_flow.py check                          # the 4 configs
    python benchmarks/torch_flow.py check --config=glow_mnist:smoke --set model.lu=False

benchmarks/speed.py times the twin's train step and its sampling against
jaxgen's.
"""

from __future__ import annotations

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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_vae  # pylint: disable=g-import-not-at-top,wrong-import-position

SCALE_OFFSET = 2.0  # jaxgen/nets/flow.py's _SCALE_OFFSET


def squeeze(x_BCHW: torch.Tensor, r: int = 2) -> torch.Tensor:
  """jaxgen's space_to_depth(x, r) in NCHW: channel (dy * r + dx) * C + c."""
  b, c, h, w = x_BCHW.shape
  x = x_BCHW.reshape(b, c, h // r, r, w // r, r).permute(0, 3, 5, 1, 2, 4)
  return x.reshape(b, r * r * c, h // r, w // r)


def unsqueeze(x_BCHW: torch.Tensor, r: int = 2) -> torch.Tensor:
  """jaxgen's depth_to_space(x, r) in NCHW."""
  b, crr, h, w = x_BCHW.shape
  c = crr // (r * r)
  x = x_BCHW.reshape(b, r, r, c, h, w).permute(0, 3, 4, 1, 5, 2)
  return x.reshape(b, c, r * h, r * w)


class ActNorm(nn.Module):
  """y = (x + bias) * exp(log_scale); the first batch sets bias and scale."""

  def __init__(self, channels: int):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(channels))
    self.log_scale = nn.Parameter(torch.zeros(channels))
    self.initialized = False

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not self.initialized:
      with torch.no_grad():
        self.bias.copy_(-x.mean((0, 2, 3)))
        self.log_scale.copy_(-torch.log(x.std((0, 2, 3), unbiased=False) + 1e-6))
      self.initialized = True
    view = lambda v: v.view(1, -1, 1, 1)
    y = (x + view(self.bias)) * torch.exp(view(self.log_scale))
    logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
    return y, logdet.expand(x.shape[0])

  def inverse(self, y: torch.Tensor) -> torch.Tensor:
    return y * torch.exp(-self.log_scale.view(1, -1, 1, 1)) - self.bias.view(1, -1, 1, 1)


class Invertible1x1Conv(nn.Module):
  """y = W x per pixel; with `lu`, W = P L (U + diag(sign_s exp(log_abs_s)))."""

  def __init__(self, channels: int, lu: bool):
    super().__init__()
    self.lu = lu
    rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
    if lu:
      p, l, u = torch.linalg.lu(rotation)
      s = torch.diagonal(u)
      self.register_buffer("p", p)
      self.register_buffer("sign_s", torch.sign(s))
      self.l = nn.Parameter(l)
      self.u = nn.Parameter(torch.triu(u, 1))
      self.log_abs_s = nn.Parameter(torch.log(s.abs()))
    else:
      self.kernel = nn.Parameter(rotation)

  def weight_and_log_abs_det(self) -> tuple[torch.Tensor, torch.Tensor]:
    if not self.lu:
      return self.kernel, torch.linalg.slogdet(self.kernel)[1]
    eye = torch.eye(self.l.shape[0], dtype=self.l.dtype, device=self.l.device)
    l = torch.tril(self.l, -1) + eye
    u = torch.triu(self.u, 1) + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
    return self.p @ l @ u, self.log_abs_s.sum()

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w, log_abs_det = self.weight_and_log_abs_det()
    y = F.conv2d(x, w[:, :, None, None])
    return y, (x.shape[2] * x.shape[3] * log_abs_det).expand(x.shape[0])

  def inverse(self, y: torch.Tensor) -> torch.Tensor:
    w, _ = self.weight_and_log_abs_det()
    return F.conv2d(y, torch.linalg.inv(w)[:, :, None, None])


def coupling_net(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
  """jaxgen's CouplingNet: conv3x3 - relu - conv1x1 - relu - conv3x3 (zeros)."""
  net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(width, width, 1), nn.ReLU(),
                      nn.Conv2d(width, out_channels, 3, padding=1))
  for conv in net[:-1:2]:
    torch_vae.flax_init_(conv)
  nn.init.zeros_(net[-1].weight)
  nn.init.zeros_(net[-1].bias)
  return net


def checkerboard(height: int, width: int, parity: int, like: torch.Tensor
                 ) -> torch.Tensor:
  i = torch.arange(height, device=like.device)[:, None]
  j = torch.arange(width, device=like.device)[None, :]
  return ((i + j + parity) % 2 == 0).to(like.dtype)[None, None]


class AffineCoupling(nn.Module):
  """jaxgen's AffineCoupling: y_b = (x_b + t(x_a)) * sigmoid(h(x_a) + 2)."""

  def __init__(self, channels: int, width: int, mask: str, parity: int):
    super().__init__()
    self.mask, self.parity = mask, parity
    if mask == "checkerboard":
      self.net = coupling_net(channels + 1, width, 2 * channels)
    else:
      changed = channels - channels // 2 if not parity else channels // 2
      cond = channels - changed
      self.net = coupling_net(cond, width, 2 * changed)

  def _shift_and_log_scale(self, x_cond: torch.Tensor):
    shift, raw_scale = self.net(x_cond).chunk(2, 1)
    return shift, F.logsigmoid(raw_scale + SCALE_OFFSET)

  def _halves(self, x: torch.Tensor):
    c = x.shape[1]
    first, second = x[:, :c // 2], x[:, c // 2:]
    return (second, first) if self.parity else (first, second)

  def _join(self, x_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    return torch.cat([y_b, x_a] if self.parity else [x_a, y_b], 1)

  def _board(self, x: torch.Tensor):
    keep = checkerboard(x.shape[2], x.shape[3], self.parity, x)
    cond = torch.cat([x * keep, keep.expand(x.shape[0], 1, -1, -1)], 1)
    return keep, self._shift_and_log_scale(cond)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if self.mask == "checkerboard":
      keep, (shift, log_scale) = self._board(x)
      change = 1.0 - keep
      y = x * keep + change * ((x + shift) * torch.exp(log_scale))
      return y, (change * log_scale).sum((1, 2, 3))
    x_a, x_b = self._halves(x)
    shift, log_scale = self._shift_and_log_scale(x_a)
    return (self._join(x_a, (x_b + shift) * torch.exp(log_scale)),
            log_scale.sum((1, 2, 3)))

  def inverse(self, y: torch.Tensor) -> torch.Tensor:
    if self.mask == "checkerboard":
      keep, (shift, log_scale) = self._board(y)
      return y * keep + (1.0 - keep) * (y * torch.exp(-log_scale) - shift)
    x_a, y_b = self._halves(y)
    shift, log_scale = self._shift_and_log_scale(x_a)
    return self._join(x_a, y_b * torch.exp(-log_scale) - shift)


class SplitPrior(nn.Module):
  """eps = (z - mean) / std of the second channel half, from a conv of the first."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = nn.Conv2d(channels // 2, channels, 3, padding=1)
    nn.init.zeros_(self.conv.weight)
    nn.init.zeros_(self.conv.bias)

  def forward(self, x: torch.Tensor):
    c = x.shape[1]
    kept, z = x[:, :c // 2], x[:, c // 2:]
    mean, log_std = self.conv(kept).chunk(2, 1)
    return kept, (z - mean) * torch.exp(-log_std), -log_std.sum((1, 2, 3))

  def inverse(self, kept: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    mean, log_std = self.conv(kept).chunk(2, 1)
    return torch.cat([kept, mean + torch.exp(log_std) * eps], 1)


class MultiScaleFlow(nn.Module):
  """jaxgen's flow_plan, op for op; parameter names follow Flax's
  ("layers_3", "splits_0"), which is what load_flax_params relies on."""

  def __init__(self, image_shape: tuple[int, int, int], m: Any):
    super().__init__()
    h, w, c = image_shape
    self.ops: list[tuple[str, int]] = []
    self.layers, self.splits = nn.ModuleList(), nn.ModuleList()
    self.shapes: list[tuple[int, int, int]] = []

    def add(layer: nn.Module) -> None:
      self.ops.append(("layer", len(self.layers)))
      self.layers.append(layer)

    for level in range(m.num_levels):
      last = level == m.num_levels - 1
      if m.architecture == "glow":
        self.ops.append(("squeeze", -1))
        h, w, c = h // 2, w // 2, 4 * c
        for _ in range(m.steps_per_level):
          add(ActNorm(c))
          add(Invertible1x1Conv(c, bool(m.lu)))
          add(AffineCoupling(c, m.width, "channel", 0))
      else:
        for k in range(m.steps_per_level + (1 if last else 0)):
          add(ActNorm(c))
          add(AffineCoupling(c, m.width, "checkerboard", k % 2))
        if last:
          break
        self.ops.append(("squeeze", -1))
        h, w, c = h // 2, w // 2, 4 * c
        for k in range(m.steps_per_level):
          add(ActNorm(c))
          add(AffineCoupling(c, m.width, "channel", k % 2))
      if not last:
        self.ops.append(("split", len(self.splits)))
        self.splits.append(SplitPrior(c))
        self.shapes.append((c - c // 2, h, w))
        c = c // 2
    self.shapes.append((c, h, w))

  def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y -> (eps [B, D], log |det d eps / d y| [B]); eps in NCHW order."""
    x, logdet, parts = y, 0.0, []
    for kind, index in self.ops:
      if kind == "squeeze":
        x = squeeze(x)
      elif kind == "split":
        x, eps, split_logdet = self.splits[index](x)
        parts.append(eps.flatten(1))
        logdet = logdet + split_logdet
      else:
        x, layer_logdet = self.layers[index](x)
        logdet = logdet + layer_logdet
    parts.append(x.flatten(1))
    return torch.cat(parts, 1), logdet

  def inverse(self, eps_BD: torch.Tensor) -> torch.Tensor:
    sizes = [math.prod(s) for s in self.shapes]
    parts = [p.reshape(-1, *s) for p, s in
             zip(eps_BD.split(sizes, 1), self.shapes)]
    x = parts[-1]
    for kind, index in reversed(self.ops):
      if kind == "squeeze":
        x = unsqueeze(x)
      elif kind == "split":
        x = self.splits[index].inverse(x, parts[index])
      else:
        x = self.layers[index].inverse(x)
    return x


class FlowTwin:
  """Flow, objective, optimizer and train step of one flow config."""

  def __init__(self, config: Any, image_shape: tuple[int, int, int],
               example_images_u8_BCHW: torch.Tensor, seed: int = 0,
               dtype: torch.dtype = torch.float32,
               schedule_fn: Callable[[int], float] | None = None,
               device: str = "cpu", compile_nets: bool = False):
    """Actnorm initialises from `example_images_u8_BCHW`, dequantized, as
    jaxgen's init does from its example batch. compile_nets: the flow's
    forward through torch.compile."""
    m = config.model
    if m.family != "flow":
      raise ValueError(f"model.family={m.family!r}: the flow twin covers 'flow'")
    torch_vae.require_float32(config)
    torch.manual_seed(seed)
    self.alpha = float(m.logit_alpha) if m.preprocess == "logit" else None
    self.temperature = float(m.temperature)
    self.num_dims = math.prod(image_shape)
    self.grad_clip_norm = float(config.optimizer.grad_clip_norm)
    self.flow = MultiScaleFlow(image_shape, m).to(device, dtype)
    self.params = list(self.flow.parameters())
    with torch.no_grad():
      self.flow(self.preprocess(self.dequantize(example_images_u8_BCHW))[0])
    self.forward = torch.compile(self.flow) if compile_nets else self.flow
    self.opt, self.schedule = torch_vae.config_optimizer(config, self.params,
                                                         schedule_fn)

  def param_count(self) -> int:
    """Trained parameters, counted as jaxgen counts them: its LU 1x1 convs
    keep their fixed permutation and signs among the params (behind a
    stop_gradient), where the twin has buffers."""
    fixed = sum(b.numel() for n, b in self.flow.named_buffers()
                if n.rsplit(".", 1)[-1] in ("p", "sign_s"))
    return sum(p.numel() for p in self.params) + fixed

  def dequantize(self, images_u8_BCHW: torch.Tensor) -> torch.Tensor:
    p = self.params[0]
    noise = torch.rand(images_u8_BCHW.shape, dtype=p.dtype, device=p.device)
    return (images_u8_BCHW.to(p.dtype) + noise) / 256.0

  def preprocess(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if self.alpha is None:
      return u - 0.5, torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
    a = self.alpha
    s = a + (1.0 - 2.0 * a) * u
    y = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1.0 - 2.0 * a) - torch.log(s) - torch.log1p(-s)).sum((1, 2, 3))
    return y, logdet

  def backward(self, u_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of mean bits/dim into .grad; metrics as jaxgen names them."""
    self.opt.zero_grad(set_to_none=True)
    y, logdet_pre = self.preprocess(u_BCHW)
    eps, logdet_flow = self.forward(y)
    log_normal = -0.5 * (eps ** 2 + math.log(2 * math.pi)).sum(1)
    nats = -(log_normal + logdet_flow + logdet_pre) + self.num_dims * math.log(256.0)
    bpd = (nats / (self.num_dims * math.log(2.0))).mean()
    bpd.backward()
    norm = torch_vae.global_grad_norm(self.params)
    return {"loss": bpd.detach(), "nll_bpd": bpd.detach(),
            "nll_nats": nats.mean().detach(), "grad_norm": norm}

  def apply_gradients(self, grad_norm: torch.Tensor) -> None:
    torch_vae.clip_and_step(self.params, self.opt, self.schedule,
                            self.grad_clip_norm, grad_norm)

  def train_step(self, images_u8_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
    metrics = self.backward(self.dequantize(images_u8_BCHW))
    self.apply_gradients(metrics["grad_norm"])
    return metrics

  @torch.no_grad()
  def sample(self, num: int) -> torch.Tensor:
    """jaxgen's flow sample(): inverse of eps ~ N(0, T^2 I), postprocessed."""
    p = self.params[0]
    eps = self.temperature * torch.randn(num, self.num_dims, dtype=p.dtype,
                                         device=p.device)
    y = self.flow.inverse(eps)
    u = y + 0.5 if self.alpha is None else (
        (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha))
    return u.clamp(0.0, 1.0)

  def named_tensors(self) -> dict[str, torch.Tensor]:
    """{"layers_3/CouplingNet_0/Conv_0/kernel": tensor} in Flax's names."""
    out = {}
    for name, module in self.flow.named_modules():
      if isinstance(module, ActNorm):
        out[f"{_flax(name)}/bias"] = module.bias
        out[f"{_flax(name)}/log_scale"] = module.log_scale
      elif isinstance(module, Invertible1x1Conv):
        names = ("p", "sign_s", "l", "u", "log_abs_s") if module.lu else ("kernel",)
        for leaf in names:
          out[f"{_flax(name)}/{leaf}"] = getattr(module, leaf)
      elif isinstance(module, AffineCoupling):
        for i, conv in enumerate(module.net[::2]):
          out[f"{_flax(name)}/CouplingNet_0/Conv_{i}/kernel"] = conv.weight
          out[f"{_flax(name)}/CouplingNet_0/Conv_{i}/bias"] = conv.bias
      elif isinstance(module, SplitPrior):
        out[f"{_flax(name)}/Conv_0/kernel"] = module.conv.weight
        out[f"{_flax(name)}/Conv_0/bias"] = module.conv.bias
    return out


def _flax(torch_name: str) -> str:
  return torch_name.replace(".", "_")    # "layers.3" -> "layers_3"


def to_torch_layout(name: str, value: np.ndarray) -> torch.Tensor:
  """A Flax conv kernel [kh, kw, in, out] as torch's [out, in, kh, kw]."""
  if name.endswith("/kernel") and value.ndim == 4:
    value = value.transpose(3, 2, 0, 1)
  return torch.tensor(np.ascontiguousarray(value))


def flax_leaves(params: Any) -> dict[str, np.ndarray]:
  out = {}

  def visit(prefix: str, node: Any) -> None:
    if not hasattr(node, "items"):
      out[prefix] = np.asarray(node)
      return
    for key, child in node.items():
      visit(f"{prefix}/{key}" if prefix else key, child)

  visit("", params["params"])
  return out


def copy_flax_tensors(ours: dict[str, torch.Tensor], params: Any,
                      layout: Callable[[str, np.ndarray], torch.Tensor]) -> None:
  """Copies jaxgen's params into the twin's tensors of the same Flax names
  (`layout` converts each to the twin's layout); both sides must hold
  exactly the same names."""
  leaves = flax_leaves(params)
  if set(leaves) != set(ours):
    raise ValueError(f"tensors differ: jaxgen only {sorted(set(leaves) - set(ours))}, "
                     f"twin only {sorted(set(ours) - set(leaves))}")
  with torch.no_grad():
    for name, tensor in ours.items():
      tensor.copy_(layout(name, leaves[name]))


def load_flax_params(twin: FlowTwin, params: Any) -> None:
  copy_flax_tensors(twin.named_tensors(), params, to_torch_layout)
  for module in twin.flow.modules():
    if isinstance(module, ActNorm):
      module.initialized = True


def relative_diffs(jax_leaves: dict[str, np.ndarray], twin: FlowTwin,
                   of_grads: bool) -> tuple[float, float]:
  """torch_vae.max_tensor_diffs over every trained tensor (the LU conv's fixed
  p and sign_s have no gradient)."""
  trained = {name: tensor for name, tensor in twin.named_tensors().items()
             if isinstance(tensor, nn.Parameter)}
  refs = {name: to_torch_layout(name, jax_leaves[name]) for name in trained}
  return torch_vae.max_tensor_diffs(refs, trained, of_grads)


def check(config: Any, steps: int = 3, seed: int = 0, tol: float = 1e-4
          ) -> dict[str, float]:
  """Twin vs jaxgen in float64 on one batch for `steps` train steps, with
  jaxgen's dequantization noise (drawn from the step's key as flow.py's
  train_step draws it) and learning rates. Compared: at each step the loss and
  metrics and every gradient, after the steps every param; each relative to
  the tensor's largest magnitude. Raises AssertionError above `tol`."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import data, optim  # pylint: disable=g-import-not-at-top
  from jaxgen.models import flow as flow_model, make_family  # pylint: disable=g-import-not-at-top

  jnp = jax.numpy
  with jax.enable_x64(True):
    spec = data.SPECS[config.data.name]
    family = make_family(config, spec)
    batch = torch_vae.random_batch(spec, config.train.batch_size, seed)
    schedule = optim.learning_rate_schedule(config.optimizer, config.train.num_steps)
    state, step_fn, grad_fn = torch_vae.jaxgen_step_in(family, batch, seed, "float64")
    dequantize = jax.jit(lambda key: flow_model.dequantize(key, batch["image"]))
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    # Jitted, as optax evaluates it inside the step: evaluated op by op the
    # warm-up's first rates come out up to 8e-6 relative apart from those,
    # which Adam's first steps carry into the params.
    jitted_schedule = jax.jit(schedule)
    twin = FlowTwin(config, spec.image_shape, images, seed, torch.float64,
                    lambda t: float(jitted_schedule(jnp.int32(t))))
    load_flax_params(twin, state.params)
    result: dict[str, float] = {}
    for i in range(steps):
      key = jax.random.PRNGKey(seed + 1 + i)
      grads = grad_fn(state.params, state, batch, key)
      u = torch.tensor(np.asarray(dequantize(key)), dtype=torch.float64)
      ours = twin.backward(u.permute(0, 3, 1, 2).contiguous())
      state, metrics = torch_vae.step_both(
          result, twin, ours, relative_diffs(flax_leaves(grads), twin, of_grads=True),
          step_fn, state, batch, key)
    result["param_abs"], result["param_rel"] = relative_diffs(
        flax_leaves(state.params), twin, of_grads=False)
    result["loss"] = float(metrics["loss"])
  torch_vae.assert_within(result, ("metric", "grad", "param"), tol)
  return result


def main() -> None:
  args = torch_vae.check_arg_parser(
      __doc__, "glow_mnist,realnvp_mnist,glow_cifar10,realnvp_cifar10",
      "model.lu=False").parse_args()
  for name in torch_vae.config_names(args.config):
    r = check(torch_vae.get_config(name, args.set), args.steps, tol=args.tol)
    print(f"{name} (float64): OK over {args.steps} steps (loss {r['loss']:.4f}); "
          "max abs (relative) differences: "
          + torch_vae.diffs_text(r, torch_vae.STEP_DIFFS), flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
