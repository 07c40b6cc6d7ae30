"""The PyTorch twin of jaxgen's diffusion configs (configs/ddpm_*.py), built
from the jaxgen config object.

The same U-Net as jaxgen/nets/unet.py (group norm with jaxgen's group count
and epsilon, swish, the sinusoidal time embedding and its two dense layers,
residual blocks with zero-initialised last convs and 1x1 skip projections,
single-head attention at the configured resolutions and in the middle,
average-pool-then-conv down and conv-then-repeat up, patches folded into
channels in jaxgen's order, an optional label embedding), the same training
step (t uniform, x_t from the closed-form q(x_t | x0) on jaxgen's float32
schedule, the eps / x0 / v target, mean squared error, Adam with clipping and
the warm-up schedule of benchmarks/torch_vae.py, the EMA with jaxgen's
warm-up) and the same sampler behind sample(): DDIM with the config's step
count and eta on the EMA weights, x0 clipped to [-1, 1]. Tensors are NCHW.

The equivalence check loads jaxgen's params into the twin, hands it the
timesteps, noise and label dropout that jaxgen's train_step draws from its
key, and compares in float64 the loss, every gradient, and the params and
EMA params after `--steps` steps. Dropout is set to 0 for the check (the two
frameworks draw different masks); the speed benchmark keeps it.

The check is not bit-tight as the autoencoder and flow checks are. It hands
the twin jaxgen's float32 pixels as its compiled step rounds them (XLA makes
the division by 127.5 a multiply-add by float32(1 / 127.5), an ulp off true
division for some values) and jaxgen's own float32 time-embedding table
(XLA's float32 exp and sin differ from torch's by up to an ulp of the angle;
the twin's own table is compared on its own). With both, `ddpm_mnist:smoke`
agrees after 3 steps to 5e-8 in the gradients and 1.3e-6 in the params with
the eps objective, 2e-7 and 3.8e-6 with v, relative to each tensor's largest
value; with true division and the twin's own table it was 8e-7 and 2.7e-5
(eps), 5e-5 and 2.8e-4 (v, over the default `--tol` of 1e-4). What still
rounds at float32 level is presumably x_t = sqrt(abar) x0 + sqrt(1 - abar)
eps, float32 coefficients that XLA may contract differently; not pursued. A
wrong layer, order or scale differs by O(1).

    python benchmarks/torch_ddpm.py check                       # ddpm_mnist
    python benchmarks/torch_ddpm.py check --config=ddpm_cifar10,ddpm_cifar10:cpu   # ~20 min each
    python benchmarks/torch_ddpm.py check --config=ddpm_mnist:smoke --set model.conditional=True
"""

from __future__ import annotations

import copy
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
import torch_flow  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_vae  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxgen.models.diffusion import ddim_timesteps, noise_schedule  # pylint: disable=g-import-not-at-top,wrong-import-position


class FlaxNamed(nn.Module):
  """Children named as Flax's compact modules name theirs: Conv_0, Dense_1,
  ResnetBlock_0, ... counted per kind in creation order."""

  def __init__(self):
    super().__init__()
    self._counts: dict[str, int] = {}

  def add(self, kind: str, module: nn.Module) -> nn.Module:
    index = self._counts.get(kind, 0)
    self._counts[kind] = index + 1
    self.add_module(f"{kind}_{index}", module)
    return module


def conv(in_channels: int, out_channels: int, kernel: int, zero: bool = False
         ) -> nn.Conv2d:
  layer = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
  torch_vae.flax_init_(layer)
  if zero:
    nn.init.zeros_(layer.weight)
  return layer


def dense(in_features: int, out_features: int, zero: bool = False) -> nn.Linear:
  layer = nn.Linear(in_features, out_features)
  torch_vae.flax_init_(layer)
  if zero:
    nn.init.zeros_(layer.weight)
  return layer


def group_norm(width: int) -> nn.GroupNorm:
  """jaxgen's _group_norm: gcd(min(32, max(width // 4, 1)), width) groups,
  Flax's epsilon."""
  return nn.GroupNorm(math.gcd(min(32, max(width // 4, 1)), width), width, eps=1e-6)


def timestep_embedding(t_B: torch.Tensor, dim: int) -> torch.Tensor:
  """jaxgen's sinusoids, in float32 as jaxgen computes them (torch's float32
  exp and sin round differently from XLA's: at t near 1,000 the two differ by
  an ulp of the angle, up to 6e-5)."""
  half = dim // 2
  freqs = torch.exp(-math.log(10_000.0)
                    * torch.arange(half, dtype=torch.float32, device=t_B.device)
                    / max(half - 1, 1))
  angles = t_B.float()[:, None] * freqs[None, :]
  return F.pad(torch.cat([torch.sin(angles), torch.cos(angles)], -1), (0, dim % 2))


class ResnetBlock(FlaxNamed):

  def __init__(self, in_width: int, width: int, emb_dim: int, dropout: float):
    super().__init__()
    self.dropout = dropout
    self.norm_in = self.add("GroupNorm", group_norm(in_width))
    self.conv_in = self.add("Conv", conv(in_width, width, 3))
    self.emb_proj = self.add("Dense", dense(emb_dim, width))
    self.norm_out = self.add("GroupNorm", group_norm(width))
    self.conv_out = self.add("Conv", conv(width, width, 3, zero=True))
    self.skip = self.add("Conv", conv(in_width, width, 1)) if in_width != width else None

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = self.conv_in(F.silu(self.norm_in(x)))
    h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
    h = F.dropout(F.silu(self.norm_out(h)), self.dropout, self.training)
    h = self.conv_out(h)
    return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(FlaxNamed):

  def __init__(self, width: int):
    super().__init__()
    self.norm = self.add("GroupNorm", group_norm(width))
    self.qkv = self.add("Dense", dense(width, 3 * width))
    self.out = self.add("Dense", dense(width, width, zero=True))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    # Channels last, as jaxgen's dense layers see them.
    qkv = self.qkv(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
    q, k, v = qkv.reshape(b, h * w, 3, c).unbind(2)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), -1)
    out = self.out(weights @ v).reshape(b, h, w, c).permute(0, 3, 1, 2)
    return x + out


class UNet(FlaxNamed):
  """jaxgen's UNet, child for child in Flax's creation order."""

  def __init__(self, m: Any, image_shape: tuple[int, int, int], num_classes: int):
    super().__init__()
    height, _, channels = image_shape
    self.patch = int(m.patch_size)
    self.base = int(m.base_width)
    # [B] timesteps -> [B, base] float32 sinusoids; the check swaps in
    # jaxgen's own table (XLA's float32 exp and sin round differently).
    self.embed = timestep_embedding
    emb_dim = 4 * self.base
    # Flax names a module when it is built: in Dense(..)(swish(Dense(..)(t)))
    # the outer one is built first, so it is Dense_0.
    self.emb_out = self.add("Dense", dense(emb_dim, emb_dim))
    self.emb_in = self.add("Dense", dense(self.base, emb_dim))
    self.label_emb = (self.add("Embed", nn.Embedding(num_classes + 1, emb_dim))
                      if num_classes else None)
    in_channels = channels * self.patch ** 2
    size = height // self.patch
    attention = tuple(m.attention_resolutions)

    def block(in_width: int, width: int) -> list[nn.Module]:
      mods = [self.add("ResnetBlock", ResnetBlock(in_width, width, emb_dim, m.dropout))]
      if size in attention:
        mods.append(self.add("AttentionBlock", AttentionBlock(width)))
      return mods

    # self.plan: ("block", modules) | ("down", conv) | ("up", conv) | ...
    self.plan: list[tuple[str, Any]] = []
    self.conv_in = self.add("Conv", conv(in_channels, self.base, 3))
    skip_widths = [self.base]
    width = self.base
    levels = len(m.width_multipliers)
    for level, mult in enumerate(m.width_multipliers):
      for _ in range(m.blocks_per_level):
        self.plan.append(("down_block", block(width, self.base * mult)))
        width = self.base * mult
        skip_widths.append(width)
      if level < levels - 1:
        self.plan.append(("down", self.add("Conv", conv(width, width, 3))))
        size //= 2
        skip_widths.append(width)
    self.plan.append(("middle", [
        self.add("ResnetBlock", ResnetBlock(width, width, emb_dim, m.dropout)),
        self.add("AttentionBlock", AttentionBlock(width)),
        self.add("ResnetBlock", ResnetBlock(width, width, emb_dim, m.dropout))]))
    for level, mult in reversed(list(enumerate(m.width_multipliers))):
      for _ in range(m.blocks_per_level + 1):
        self.plan.append(("up_block", block(width + skip_widths.pop(), self.base * mult)))
        width = self.base * mult
      if level > 0:
        self.plan.append(("up", self.add("Conv", conv(width, width, 3))))
        size *= 2
    self.norm_out = self.add("GroupNorm", group_norm(width))
    self.conv_out = self.add("Conv", conv(width, in_channels, 3, zero=True))

  def forward(self, x: torch.Tensor, t_B: torch.Tensor,
              labels_B: torch.Tensor | None) -> torch.Tensor:
    emb = self.emb_out(F.silu(self.emb_in(self.embed(t_B, self.base).to(x.dtype))))
    if self.label_emb is not None:
      emb = emb + self.label_emb(labels_B)

    def run_block(mods, h):
      h = mods[0](h, emb)
      return mods[1](h) if len(mods) > 1 else h

    if self.patch > 1:
      x = torch_flow.squeeze(x, self.patch)
    h = self.conv_in(x)
    skips = [h]
    for kind, part in self.plan:
      if kind == "down_block":
        h = run_block(part, h)
        skips.append(h)
      elif kind == "down":
        h = part(F.avg_pool2d(h, 2))
        skips.append(h)
      elif kind == "middle":
        h = part[2](part[1](part[0](h, emb)), emb)
      elif kind == "up_block":
        h = run_block(part, torch.cat([h, skips.pop()], 1))
      else:  # "up"
        h = part(h).repeat_interleave(2, 2).repeat_interleave(2, 3)
    out = self.conv_out(F.silu(self.norm_out(h)))
    return torch_flow.unsqueeze(out, self.patch) if self.patch > 1 else out


def _to_flax_name(torch_name: str) -> str:
  """"ResnetBlock_0.Conv_1.weight" -> "ResnetBlock_0/Conv_1/kernel" (and
  GroupNorm's weight -> scale, Embed's weight -> embedding)."""
  *path, leaf = torch_name.split(".")
  kind = path[-1].rsplit("_", 1)[0]
  if leaf == "weight":
    leaf = {"GroupNorm": "scale", "Embed": "embedding"}.get(kind, "kernel")
  return "/".join([*path, leaf])


def to_torch_layout(name: str, value: np.ndarray) -> torch.Tensor:
  """Flax conv [kh, kw, in, out] -> [out, in, kh, kw]; dense [in, out] -> [out, in]."""
  if name.endswith("/kernel"):
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return torch.tensor(np.ascontiguousarray(value))


class DiffusionTwin:
  """U-Net, EMA copy, optimizer, train step and DDIM sampler of one config."""

  def __init__(self, config: Any, image_shape: tuple[int, int, int],
               num_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32,
               schedule_fn: Callable[[int], float] | None = None,
               device: str = "cpu", compile_nets: bool = False):
    m = config.model
    if m.family != "diffusion":
      raise ValueError(f"model.family={m.family!r}: the twin covers 'diffusion'")
    torch_vae.require_float32(config)
    torch.manual_seed(seed)
    self.m = m
    self.num_classes = num_classes if m.conditional else 0
    self.image_shape = image_shape
    self.net = UNet(m, image_shape, self.num_classes).to(device, dtype)
    self.ema = copy.deepcopy(self.net).requires_grad_(False)
    self.params = list(self.net.parameters())
    self.forward = torch.compile(self.net) if compile_nets else self.net
    # jaxgen keeps the schedule in float32 (diffusion.make_schedule).
    alpha_bar = np.cumprod(1.0 - noise_schedule(m.schedule, m.num_timesteps))
    self.alpha_bar = torch.tensor(alpha_bar.astype(np.float32), dtype=dtype,
                                  device=device)   # float32 values, in dtype
    self.grad_clip_norm = float(config.optimizer.grad_clip_norm)
    self.opt, self.schedule = torch_vae.config_optimizer(config, self.params,
                                                         schedule_fn)
    self.step = 0

  def backward(self, x0_f32: torch.Tensor, t_B: torch.Tensor, noise: torch.Tensor,
               labels_B: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The loss's gradients into .grad, from float32 pixels in [-1, 1] and
    given timesteps, noise and (already dropped-out) labels; metrics as
    jaxgen names them. The schedule's coefficients and their products with
    the float32 pixels are float32, as in jaxgen's q_sample (which a float64
    check has to follow to the bit)."""
    self.opt.zero_grad(set_to_none=True)
    dtype = noise.dtype
    abar = self.alpha_bar[t_B].float()[:, None, None, None]
    a, s = abar.sqrt(), (1.0 - abar).sqrt()
    x_t = (a * x0_f32).to(dtype) + s.to(dtype) * noise
    objective = self.m.objective
    goal = (noise if objective == "eps" else x0_f32.to(dtype) if objective == "x0"
            else a.to(dtype) * noise - (s * x0_f32).to(dtype))
    loss = ((self.forward(x_t, t_B, labels_B) - goal) ** 2).mean()
    loss.backward()
    norm = torch_vae.global_grad_norm(self.params)
    return {"loss": loss.detach(), "grad_norm": norm}

  @torch.no_grad()
  def apply_gradients(self, grad_norm: torch.Tensor) -> None:
    torch_vae.clip_and_step(self.params, self.opt, self.schedule,
                            self.grad_clip_norm, grad_norm)
    self.step += 1
    decay = min(float(self.m.ema_decay), (1.0 + self.step) / (10.0 + self.step))
    ema = list(self.ema.parameters())
    torch._foreach_mul_(ema, decay)  # pylint: disable=protected-access
    torch._foreach_add_(ema, self.params, alpha=1.0 - decay)  # pylint: disable=protected-access

  def train_step(self, images_u8_BCHW: torch.Tensor, labels_B: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    x0 = images_u8_BCHW.float() / 127.5 - 1.0
    b = x0.shape[0]
    t_B = torch.randint(0, len(self.alpha_bar), (b,), device=x0.device)
    labels = None
    if self.num_classes:
      dropped = torch.rand(b, device=x0.device) < self.m.label_dropout
      labels = torch.where(dropped, self.num_classes, labels_B)
    noise = torch.randn(x0.shape, dtype=self.alpha_bar.dtype, device=x0.device)
    metrics = self.backward(x0, t_B, noise, labels)
    self.apply_gradients(metrics["grad_norm"])
    return metrics

  @torch.no_grad()
  def sample(self, num: int) -> torch.Tensor:
    """jaxgen's sample() without labels: DDIM (`model.sample_steps`,
    `model.ddim_eta`) on the EMA weights, x0 clipped to [-1, 1]; NCHW in [0, 1]."""
    h, w, c = self.image_shape
    device = self.alpha_bar.device
    x = torch.randn(num, c, h, w, dtype=self.alpha_bar.dtype, device=device)
    labels = (torch.full((num,), self.num_classes, device=device)
              if self.num_classes else None)
    steps = ddim_timesteps(len(self.alpha_bar), int(self.m.sample_steps))
    prevs = np.append(-1, steps[:-1])
    eta = float(self.m.ddim_eta)
    for t, t_prev in zip(steps[::-1].tolist(), prevs[::-1].tolist()):
      abar = self.alpha_bar[t]
      abar_prev = self.alpha_bar[t_prev] if t_prev >= 0 else torch.ones_like(abar)
      out = self.ema(x, torch.full((num,), t, device=device), labels)
      a, s = abar.sqrt(), (1.0 - abar).sqrt()
      objective = self.m.objective
      x0 = ((x - s * out) / a if objective == "eps" else out if objective == "x0"
            else a * x - s * out)
      x0 = x0.clamp(-1.0, 1.0)
      eps = (x - a * x0) / s
      sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
      direction = (1.0 - abar_prev - sigma ** 2).clamp(min=0.0).sqrt() * eps
      x = abar_prev.sqrt() * x0 + direction + sigma * torch.randn_like(x)
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)

  def named_tensors(self, ema: bool = False) -> dict[str, torch.Tensor]:
    net = self.ema if ema else self.net
    return {_to_flax_name(name): p for name, p in net.named_parameters()}


def load_flax_params(twin: DiffusionTwin, params: Any) -> None:
  torch_flow.copy_flax_tensors(twin.named_tensors(), params, to_torch_layout)
  twin.ema.load_state_dict(twin.net.state_dict())


def relative_diffs(jax_leaves: dict[str, np.ndarray], ours: dict[str, torch.Tensor],
                   of_grads: bool) -> tuple[float, float]:
  refs = {name: to_torch_layout(name, jax_leaves[name]) for name in ours}
  return torch_vae.max_tensor_diffs(refs, ours, of_grads)


def check(config: Any, steps: int = 3, seed: int = 0, tol: float = 1e-4
          ) -> dict[str, float]:
  """Twin vs jaxgen in float64 on one batch for `steps` train steps (dropout
  off), with jaxgen's timesteps, noise and label dropout (drawn from the
  step's key as diffusion.py's train_step draws them) and its learning rates
  (the jitted schedule, as optax evaluates it). Compared: at each step the
  loss, grad norm and every gradient; after the steps every param and EMA
  param; each relative to the tensor's largest magnitude."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import data, optim  # pylint: disable=g-import-not-at-top
  from jaxgen.models import make_family  # pylint: disable=g-import-not-at-top
  from jaxgen.nets import unet  # pylint: disable=g-import-not-at-top

  jnp = jax.numpy
  config.model.dropout = 0.0
  with jax.enable_x64(True):
    spec = data.SPECS[config.data.name]
    family = make_family(config, spec)
    num_classes = spec.num_classes if config.model.conditional else 0
    batch = torch_vae.random_batch(spec, config.train.batch_size, seed)
    schedule = jax.jit(optim.learning_rate_schedule(config.optimizer,
                                                    config.train.num_steps))
    state, step_fn, grad_fn = torch_vae.jaxgen_step_in(family, batch, seed, "float64")
    b, num_t = config.train.batch_size, int(config.model.num_timesteps)

    @jax.jit
    def draws(key, images_u8):  # diffusion.py's train_step, up to the network
      # jaxgen's float32 pixels as its compiled step rounds them (XLA makes
      # the division a multiply-add by float32(1 / 127.5), an ulp off true
      # division for some values); the images an argument, as a constant
      # batch would be folded with other rounding.
      x0 = images_u8.astype(jnp.float32) / 127.5 - 1.0
      t_key, noise_key, _, label_key = jax.random.split(key, 4)
      t_B = jax.random.randint(t_key, (b,), 0, num_t)
      noise = jax.random.normal(noise_key, (b, *spec.image_shape))
      labels = None
      if num_classes:
        dropped = jax.random.bernoulli(label_key, config.model.label_dropout, (b,))
        labels = jnp.where(dropped, num_classes, batch["label"])
      return x0, t_B, noise, labels

    twin = DiffusionTwin(config, spec.image_shape, spec.num_classes, seed,
                         torch.float64, lambda t: float(schedule(jnp.int32(t))))
    load_flax_params(twin, state.params)
    # The time embedding is float32 on both sides (jaxgen computes it so even
    # under x64) and rounds differently in each: compared on its own.
    all_t = np.arange(num_t)
    jax_table = torch.from_numpy(np.array(jax.jit(unet.timestep_embedding, static_argnums=1)(
        jnp.asarray(all_t), config.model.base_width)))
    result = {"embedding_abs": float((
        jax_table - timestep_embedding(torch.tensor(all_t), config.model.base_width)
    ).abs().max())}
    # The rest of the check on jaxgen's table, so what it compares is the twin.
    for net in (twin.net, twin.ema):
      net.embed = lambda t_B, _: jax_table[t_B]
    for i in range(steps):
      key = jax.random.PRNGKey(seed + 1 + i)
      grads = grad_fn(state.params, state, batch, key)
      x0, t_B, noise, labels = draws(key, batch["image"])
      ours = twin.backward(
          torch.tensor(np.asarray(x0)).permute(0, 3, 1, 2).contiguous(),
          torch.tensor(np.asarray(t_B)).long(),
          torch.tensor(np.asarray(noise)).permute(0, 3, 1, 2).contiguous(),
          None if labels is None else torch.tensor(np.asarray(labels)).long())
      state, metrics = torch_vae.step_both(
          result, twin, ours,
          relative_diffs(torch_flow.flax_leaves(grads), twin.named_tensors(), of_grads=True),
          step_fn, state, batch, key)
    result["param_abs"], result["param_rel"] = relative_diffs(
        torch_flow.flax_leaves(state.params), twin.named_tensors(), of_grads=False)
    result["ema_abs"], result["ema_rel"] = relative_diffs(
        torch_flow.flax_leaves(state.ema_params), twin.named_tensors(ema=True), of_grads=False)
    result["loss"] = float(metrics["loss"])
  assert result["embedding_abs"] < 1e-4, result["embedding_abs"]
  torch_vae.assert_within(result, ("metric", "grad", "param", "ema"), tol)
  return result


def main() -> None:
  args = torch_vae.check_arg_parser(__doc__, "ddpm_mnist",
                                    "model.objective=v").parse_args()
  for name in torch_vae.config_names(args.config):
    r = check(torch_vae.get_config(name, args.set), args.steps, tol=args.tol)
    print(f"{name} (float64, dropout 0): OK over {args.steps} steps (loss "
          f"{r['loss']:.4f}); max abs (relative) differences: "
          + torch_vae.diffs_text(r, (*torch_vae.STEP_DIFFS, ("EMA params", "ema")))
          + f"; the twin's own float32 time embedding vs jaxgen's: {r['embedding_abs']:.1e}",
          flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
