"""The PyTorch twin of jaxgen's classifiers (configs/classifier_mnist.py,
classifier_cifar10.py), built from the jaxgen config object.

The same networks as jaxgen/nets/classifier.py: "plain" (pairs of 3x3 convs
per width, the first strided with Flax's "SAME" padding, ReLU, 2x2 max
pooling between widths, flattened in jaxgen's (h, w, c) order by the dense
layer's weight layout) and "bn_pool" (bias-free 3x3 conv, 2x2 max pool,
batch norm, tanh-approximated GELU as Flax's nn.gelu, conv, batch norm, GELU
per width; global max pool); both end in a ReLU dense layer of `hidden`
units, dropout and the logits. LeCun-normal kernels, zero biases, batch norm
scale 1 and shift 0 as Flax initialises them. Batch norm is Flax's: it
normalizes by the batch's biased variance with epsilon 1e-5, and its running
averages (momentum 0.9) move towards the batch mean and the *biased*
variance, where torch's move towards the unbiased one (torch_vae.FlaxBatchNorm2d
corrects that, at no extra pass over the activations). The same training
step: pixels / 255 in float32, random translation by up to `model.max_shift`
pixels with zero padding and (with `model.flip`) left-right mirroring, as
data.augment does, drawn per image each step; [0, 1] -> [-1, 1]; softmax
cross-entropy with `model.label_smoothing` (optax.smooth_labels' targets are
torch's label_smoothing), mean over the batch; train accuracy and the
gradient norm as metrics; Adam or AdamW (decoupled weight decay on every
tensor, as optax.adamw without a mask) with clipping and the warm-up +
cosine schedule of benchmarks/torch_vae.py. Tensors are NCHW.

Not covered: evaluation and feature extraction (running-average batch norm,
`model.flip_average`) and export; a config key the twin does not know raises
ValueError.

The equivalence check loads jaxgen's initial params and batch statistics
into the twin, hands it the translations, mirrorings and dropout mask that
jaxgen's train_step draws from its key (redrawn with jax as data.augment
draws them, the twin augmenting the pixels itself; its augmented images must
equal data.augment's exactly; the mask read off jaxgen's own Dropout), and
compares in float64 the twin's learning-rate schedule, the loss and metrics,
every gradient, and every param and batch statistic after `--steps` Adam(W)
steps, each relative to the tensor's largest magnitude, under `--tol` (1e-9,
tighter than the other twins' 1e-4 because this one agrees to ~1e-13, and
1e-4 would pass torch's own batch norm, below; the schedule, which optax
evaluates in float32, under 1e-6):

    python benchmarks/torch_classifier.py check                 # both configs, full size
    python benchmarks/torch_classifier.py check --config=classifier_mnist:smoke,classifier_cifar10:smoke
    python benchmarks/torch_classifier.py check --config=classifier_mnist:smoke --set model.arch=bn_pool

The default printed (2 CPU cores shared with other jobs, about 5 minutes):

    classifier_mnist (float64): OK over 3 steps (loss 2.3349); augmented pixels
    identical; max abs (relative) differences: lr schedule 1.30e-10 (6.51e-08),
    metrics 2.66e-15 (2.27e-15), grads 1.11e-16 (5.88e-15), params after the
    steps 9.76e-17 (4.09e-15), batch statistics none (no batch norm)
    classifier_cifar10 (float64): OK over 3 steps (loss 2.9789); augmented
    pixels identical; max abs (relative) differences: lr schedule 1.52e-10
    (7.61e-08), metrics 8.88e-15 (1.34e-15), grads 6.98e-15 (1.65e-13), params
    after the steps 4.44e-16 (4.00e-13), batch statistics 8.77e-15 (1.83e-14)

and the `:smoke` variants agree to 1e-12 or better in everything (they pass
`--tol=1e-12`). Three things found on the way:
- jaxgen's pixels are not u8 / 255 correctly rounded: XLA compiles the step's
  division by 255 to a multiplication by float32(1 / 255), an ulp off true
  division for 126 of the 256 values (and in a smaller graph it even folds
  the later * 2 into that constant). Fed correctly rounded pixels the twin
  was 1e-7 apart in the loss and up to 7e-5 in params after 3 steps (smoke
  configs); the check feeds it jaxgen's. The twin's own train_step divides
  (as torch does on CPU), which does not matter to its speed.
- The lr schedule rows above are the twin's own schedule against optax's
  over all of training: optax evaluates it in float32 even under x64 (~1e-7
  relative). In the steps the twin takes optax's rates, as torch_vae's check
  explains.
- Running variance: torch's BatchNorm2d would move it towards the unbiased
  batch variance, Flax's towards the biased one, a relative difference of
  momentum / (n - 1) per step, n = batch x height x width: ~9e-5 after the
  smoke config's 3 steps, under the other twins' 1e-4. The twin's
  BatchNorm2d follows Flax (1e-14 above), and the default `--tol` of 1e-9
  tells the two apart.

benchmarks/speed.py times the twin's train step against jaxgen's (the
classifier has no sampler).
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
import torch_ddpm  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_flow  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_vae  # pylint: disable=g-import-not-at-top,wrong-import-position

# Flax's BatchNorm momentum as BNPoolClassifier uses it (bn_momentum; its
# epsilon, nn.BatchNorm's default 1e-5, is torch_vae.FlaxBatchNorm2d's).
BN_MOMENTUM = 0.9
# The model keys of classifier.add_model_config: a key beyond these is a
# setting the twin has not learned, so it refuses rather than ignore it.
MODEL_KEYS = frozenset({"family", "arch", "widths", "hidden", "dropout",
                        "max_shift", "flip", "flip_average", "label_smoothing"})


def require_supported(config: Any) -> None:
  """Raises ValueError for classifier settings the twin does not build."""
  m = config.model
  if m.family != "classifier":
    raise ValueError(f"model.family={m.family!r}: the twin covers 'classifier'")
  if m.arch not in ("plain", "bn_pool"):
    raise ValueError(f"model.arch={m.arch!r}: the twin has 'plain' and 'bn_pool'")
  unknown = sorted(set(m.keys()) - MODEL_KEYS)
  if unknown:
    raise ValueError(f"model.{unknown[0]}: a classifier setting the twin does "
                     f"not build (it knows {sorted(MODEL_KEYS)})")


def lecun_normal_(weight: torch.Tensor) -> None:
  """Flax's default kernel init (see torch_vae.flax_init_), for layers that
  may have no bias."""
  std = math.sqrt(1.0 / weight[0].numel()) / 0.87962566103423978
  nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


def dense(in_features: int, out_features: int) -> nn.Linear:
  layer = nn.Linear(in_features, out_features)
  torch_vae.flax_init_(layer)
  return layer


def bias_free_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
  # Stride 1: "SAME" is a symmetric pad of 1.
  layer = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
  lecun_normal_(layer.weight)
  return layer


def batch_norm(width: int) -> torch_vae.FlaxBatchNorm2d:
  return torch_vae.FlaxBatchNorm2d(width, BN_MOMENTUM)


def flatten_dims(image_hw: tuple[int, int], widths: tuple[int, ...]
                 ) -> tuple[int, int]:
  """The plain net's map size at the dense layer: a stride-2 "SAME" conv
  (ceil), then floor-halving 2x2 max pools between widths."""
  h, w = -(-image_hw[0] // 2), -(-image_hw[1] // 2)
  for _ in widths[1:]:
    h, w = h // 2, w // 2
  return h, w


class ClassifierNet(torch_ddpm.FlaxNamed):
  """jaxgen's ConvClassifier ("plain") or BNPoolClassifier ("bn_pool"), child
  for child in Flax's creation order; forward takes pixels in [-1, 1]."""

  def __init__(self, m: Any, image_shape: tuple[int, int, int], num_classes: int):
    super().__init__()
    self.arch = m.arch
    self.dropout = float(m.dropout)
    widths = tuple(int(w) for w in m.widths)
    prev = image_shape[2]
    self.blocks: list[tuple[nn.Module, ...]] = []
    for i, width in enumerate(widths):
      if self.arch == "plain":
        self.blocks.append((
            self.add("Conv", torch_vae.SameConv2d(prev, width, 2 if i == 0 else 1)),
            self.add("Conv", torch_vae.SameConv2d(width, width))))
      else:
        # Flax builds the first conv, then the first batch norm, then the
        # second conv (inside norm_act(Conv(..)(x))) and its batch norm.
        self.blocks.append(tuple(self.add(kind, layer) for kind, layer in (
            ("Conv", bias_free_conv(prev, width)), ("BatchNorm", batch_norm(width)),
            ("Conv", bias_free_conv(width, width)), ("BatchNorm", batch_norm(width)))))
      prev = width
    for module in self.modules():
      if isinstance(module, torch_vae.SameConv2d):
        torch_vae.flax_init_(module)
    # The plain net flattens a map whose (h, w, c) order the dense kernel's
    # layout takes care of (layout_fn); bn_pool pools it away.
    self.map_hwc = ((*flatten_dims(image_shape[:2], widths), prev)
                    if self.arch == "plain" else None)
    features_in = int(np.prod(self.map_hwc)) if self.map_hwc else prev
    self.hidden = self.add("Dense", dense(features_in, int(m.hidden)))
    self.logits = self.add("Dense", dense(int(m.hidden), num_classes))

  def forward(self, x_BCHW: torch.Tensor, dropout_mask: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Training-mode logits; dropout_mask (True = keep) replaces a fresh draw."""
    x = x_BCHW
    for i, block in enumerate(self.blocks):
      if self.arch == "plain":
        x = F.relu(block[1](F.relu(block[0](x))))
        if i + 1 < len(self.blocks):
          x = F.max_pool2d(x, 2)
      else:
        conv0, norm0, conv1, norm1 = block
        x = F.gelu(norm0(F.max_pool2d(conv0(x), 2)), approximate="tanh")
        x = F.gelu(norm1(conv1(x)), approximate="tanh")
    # amax splits the gradient among tied maxima, as jnp.max's does.
    x = x.flatten(1) if self.arch == "plain" else x.amax((2, 3))
    features = F.relu(self.hidden(x))
    if self.dropout and self.training:
      keep = 1.0 - self.dropout
      if dropout_mask is None:
        dropout_mask = torch.rand_like(features) < keep
      # Flax's select(mask, x / keep, 0); F.dropout multiplies by 1 / keep.
      features = torch.where(dropout_mask, features / keep, 0.0)
    return self.logits(features)


def augment(x01_BCHW: torch.Tensor, offsets_B2: torch.Tensor | None,
            mirror_B: torch.Tensor | None, max_shift: int) -> torch.Tensor:
  """data.augment with given draws: each image shifted to the window at
  offsets (row, col) of its max_shift-zero-padded self, then mirrored
  left-right where mirror_B."""
  b, _, h, w = x01_BCHW.shape
  if max_shift:
    padded = F.pad(x01_BCHW, (max_shift,) * 4)
    rows = offsets_B2[:, 0, None] + torch.arange(h, device=padded.device)   # B, h
    cols = offsets_B2[:, 1, None] + torch.arange(w, device=padded.device)   # B, w
    batch = torch.arange(b, device=padded.device)[:, None, None]
    # Advanced indices around the channel slice go first: B, h, w, C. Back to
    # contiguous NCHW, so the convs see the memory format the other twins' do.
    x01_BCHW = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2).contiguous()
  if mirror_B is not None:
    x01_BCHW = torch.where(mirror_B[:, None, None, None], x01_BCHW.flip(3), x01_BCHW)
  return x01_BCHW


class ClassifierTwin:
  """Network, optimizer and train step of one classifier config."""

  variational = False  # no sampler: benchmarks/speed.py times the step alone

  def __init__(self, config: Any, image_shape: tuple[int, int, int],
               num_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32,
               schedule_fn: Callable[[int], float] | None = None,
               device: str = "cpu", compile_nets: bool = False):
    require_supported(config)
    torch.manual_seed(seed)
    m = config.model
    self.max_shift = int(m.max_shift)
    self.flip = bool(m.flip)
    self.label_smoothing = float(m.label_smoothing)
    self.dtype = dtype
    self.net = ClassifierNet(m, image_shape, num_classes).to(device, dtype)
    self.params = list(self.net.parameters())
    self.forward = torch.compile(self.net) if compile_nets else self.net
    self.grad_clip_norm = float(config.optimizer.grad_clip_norm)
    self.opt, self.schedule = torch_vae.config_optimizer(config, self.params,
                                                         schedule_fn)
    self.step = 0

  def draws(self, batch_size: int, device: torch.device
            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """This step's translations (row, col in [0, 2 max_shift]) and mirrorings."""
    offsets = (torch.randint(0, 2 * self.max_shift + 1, (batch_size, 2), device=device)
               if self.max_shift else None)
    mirror = torch.rand(batch_size, device=device) < 0.5 if self.flip else None
    return offsets, mirror

  def backward(self, x01_BCHW: torch.Tensor, labels_B: torch.Tensor,
               dropout_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The loss's gradients into .grad from augmented float32 pixels in [0, 1];
    metrics as jaxgen names them, as tensors (no host sync)."""
    self.opt.zero_grad(set_to_none=True)
    # [-1, 1] in float32, as jaxgen scales its float32 pixels before the
    # first conv promotes them to the params' dtype.
    logits = self.forward((x01_BCHW * 2.0 - 1.0).to(self.dtype), dropout_mask)
    loss = F.cross_entropy(logits, labels_B, label_smoothing=self.label_smoothing)
    loss.backward()
    norm = torch_vae.global_grad_norm(self.params)
    accuracy = (logits.detach().argmax(-1) == labels_B).float().mean()
    return {"loss": loss.detach(), "train_accuracy": accuracy, "grad_norm": norm}

  @torch.no_grad()
  def apply_gradients(self, grad_norm: torch.Tensor) -> None:
    torch_vae.clip_and_step(self.params, self.opt, self.schedule,
                            self.grad_clip_norm, grad_norm)
    self.step += 1

  def train_step(self, images_BCHW: torch.Tensor, labels_B: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """jaxgen's train_step on uint8 images (or float32 pixels in [0, 1]):
    fresh translations, mirrorings and dropout, one update."""
    x01 = (images_BCHW.float() / 255.0 if images_BCHW.dtype == torch.uint8
           else images_BCHW)
    offsets, mirror = self.draws(x01.shape[0], x01.device)
    metrics = self.backward(augment(x01, offsets, mirror, self.max_shift), labels_B)
    self.apply_gradients(metrics["grad_norm"])
    return metrics

  def named_tensors(self) -> dict[str, torch.Tensor]:
    """Flax name ("Conv_0/kernel", "BatchNorm_1/scale") -> trained tensor."""
    return {_to_flax_name(name): p for name, p in self.net.named_parameters()}

  def named_batch_stats(self) -> dict[str, torch.Tensor]:
    """Flax name ("BatchNorm_0/mean", ".../var") -> running average."""
    leaf = {"running_mean": "mean", "running_var": "var"}
    out = {}
    for name, buffer in self.net.named_buffers():
      module, _, kind = name.rpartition(".")
      if kind in leaf:
        out[f"{module}/{leaf[kind]}"] = buffer
    return out


def _to_flax_name(torch_name: str) -> str:
  module, _, leaf = torch_name.rpartition(".")
  if leaf == "weight":
    leaf = "scale" if module.startswith("BatchNorm") else "kernel"
  return f"{module}/{leaf}"


def layout_fn(twin: ClassifierTwin) -> Callable[[str, np.ndarray], torch.Tensor]:
  """Converts a Flax tensor (or its gradient) named `name` to the twin's
  layout: conv HWIO -> OIHW, dense (in, out) -> (out, in), and the plain
  net's first dense layer from flattened (h, w, c) to (c, h, w) inputs."""
  map_hwc = twin.net.map_hwc

  def to_torch(name: str, value: np.ndarray) -> torch.Tensor:
    value = np.asarray(value)
    if name == "Dense_0/kernel" and map_hwc:
      value = value.reshape(*map_hwc, -1).transpose(2, 0, 1, 3).reshape(value.shape)
    if name.endswith("/kernel"):
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return torch.tensor(np.ascontiguousarray(value))

  return to_torch


def load_flax_state(twin: ClassifierTwin, params: Any, batch_stats: Any) -> None:
  """jaxgen's params and (bn_pool) batch statistics into the twin; every
  tensor on each side must have its counterpart."""
  layout = layout_fn(twin)
  torch_flow.copy_flax_tensors(twin.named_tensors(), params, layout)
  torch_flow.copy_flax_tensors(twin.named_batch_stats(),
                               {"params": batch_stats.get("batch_stats", {})}, layout)


def relative_diffs(twin: ClassifierTwin, jax_tree: Any, ours: dict[str, torch.Tensor],
                   of_grads: bool) -> tuple[float, float]:
  leaves, layout = torch_flow.flax_leaves(jax_tree), layout_fn(twin)
  refs = {name: layout(name, leaves[name]) for name in ours}
  return torch_vae.max_tensor_diffs(refs, ours, of_grads)


# optax evaluates the schedule in float32 even under x64 (~1e-7 of the peak).
LR_SCHEDULE_TOL = 1e-6


def check(config: Any, steps: int = 3, seed: int = 0, tol: float = 1e-9
          ) -> dict[str, float]:
  """Twin vs jaxgen in float64 on one batch for `steps` train steps, with
  jaxgen's translations, mirrorings and dropout mask (drawn from the step's
  key as classifier.py's train_step and data.augment draw them) and its
  learning rates (the jitted schedule, as optax evaluates it). Compared: the
  twin's own schedule with jaxgen's over all of training (relative to the
  peak); the twin's augmented pixels with data.augment's; at each step the
  loss, train accuracy, grad norm and every gradient; after the steps every
  param and batch statistic; each relative to the tensor's largest magnitude."""
  import flax.linen as flax_nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import data, optim  # pylint: disable=g-import-not-at-top
  from jaxgen.models import classifier, make_family  # pylint: disable=g-import-not-at-top

  jnp = jax.numpy
  m = config.model
  with jax.enable_x64(True):
    spec = data.SPECS[config.data.name]
    family = make_family(config, spec)
    net = classifier.make_network(config, spec)
    b, shift = config.train.batch_size, int(m.max_shift)
    batch = torch_vae.random_batch(spec, b, seed)
    jax_schedule = optim.learning_rate_schedule(config.optimizer, config.train.num_steps)
    all_steps = np.arange(config.train.num_steps + 1)
    twin_lr = np.array([torch_vae.learning_rate(config.optimizer,
                                                config.train.num_steps, t)
                        for t in all_steps.tolist()])
    lr_abs = float(np.abs(twin_lr - np.asarray(
        jax_schedule(jnp.asarray(all_steps, jnp.int32)))).max())
    schedule = jax.jit(jax_schedule)
    state, step_fn, grad_fn = torch_vae.jaxgen_step_in(family, batch, seed, "float64")

    @jax.jit
    def draws(key, x01):  # classifier.py's train_step and data.augment, up to the net
      augment_key, dropout_key = jax.random.split(key)
      shift_key, flip_key = jax.random.split(augment_key)
      offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * shift + 1)
      mirror = jax.random.bernoulli(flip_key, 0.5, (b,))
      return offsets, mirror, data.augment(augment_key, x01, shift, m.flip), dropout_key

    def dropout_mask(state, x, dropout_key):
      """The keep mask of jaxgen's Dropout in train_step's forward pass: the
      same apply, its Dropout run once on ones (one make_rng, as in the step)."""
      masks = []

      def grab(next_fun, args, kwargs, context):
        if not (isinstance(context.module, flax_nn.Dropout)
                and context.method_name == "__call__"):
          return next_fun(*args, **kwargs)
        kept = next_fun(jnp.ones_like(args[0]), *args[1:], **kwargs)
        masks.append(kept != 0)
        return kept * args[0]

      with flax_nn.intercept_methods(grab):
        net.apply({**state.params, **state.batch_stats}, x, train=True,
                  rngs={"dropout": dropout_key}, mutable=list(state.batch_stats))
      return torch.from_numpy(np.array(masks[0])) if masks else None

    twin = ClassifierTwin(config, spec.image_shape, spec.num_classes, seed,
                          torch.float64, lambda t: float(schedule(jnp.int32(t))))
    load_flax_state(twin, state.params, state.batch_stats)
    # jaxgen's float32 pixels as its compiled step computes them: XLA turns
    # the division by 255 into a multiplication by float32(1 / 255), an ulp
    # off true division (torch's, numpy's) for 126 of the 256 values.
    x01_BHWC = batch["image"].astype(np.float32) * (np.float32(1) / np.float32(255))
    x01 = torch.from_numpy(x01_BHWC).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(batch["label"].astype(np.int64))
    result = {"lr_abs": lr_abs, "lr_rel": lr_abs / config.optimizer.learning_rate,
              "augment_abs": 0.0}
    for i in range(steps):
      key = jax.random.PRNGKey(seed + 1 + i)
      grads = grad_fn(state.params, state, batch, key)
      offsets, mirror, jax_x, dropout_key = (
          np.array(a) if i < 3 else a for i, a in enumerate(draws(key, x01_BHWC)))
      x = augment(x01, torch.from_numpy(offsets).long() if shift else None,
                  torch.from_numpy(mirror) if m.flip else None, shift)
      result["augment_abs"] = max(result["augment_abs"], float(
          (x - torch.from_numpy(jax_x).permute(0, 3, 1, 2)).abs().max()))
      ours = twin.backward(x, labels, dropout_mask(state, jax_x, dropout_key))
      state, metrics = torch_vae.step_both(
          result, twin, ours,
          relative_diffs(twin, grads, twin.named_tensors(), of_grads=True),
          step_fn, state, batch, key)
    result["param_abs"], result["param_rel"] = relative_diffs(
        twin, state.params, twin.named_tensors(), of_grads=False)
    kinds = ("metric", "grad", "param")
    if state.batch_stats:  # bn_pool
      result["stats_abs"], result["stats_rel"] = relative_diffs(
          twin, {"params": state.batch_stats["batch_stats"]},
          twin.named_batch_stats(), of_grads=False)
      kinds += ("stats",)
    result["loss"] = float(metrics["loss"])
  assert result["augment_abs"] == 0.0, f"augmented pixels differ: {result['augment_abs']}"
  torch_vae.assert_within(result, ("lr",), max(tol, LR_SCHEDULE_TOL))
  torch_vae.assert_within(result, kinds, tol)
  return result


def main() -> None:
  parser = torch_vae.check_arg_parser(__doc__, "classifier_mnist,classifier_cifar10",
                                      "model.label_smoothing=0.1")
  parser.set_defaults(tol=1e-9)
  args = parser.parse_args()
  for name in torch_vae.config_names(args.config):
    r = check(torch_vae.get_config(name, args.set), args.steps, tol=args.tol)
    stats = (torch_vae.diffs_text(r, [("batch statistics", "stats")]) if "stats_abs" in r
             else "batch statistics none (no batch norm)")
    print(f"{name} (float64): OK over {args.steps} steps (loss {r['loss']:.4f}); "
          "augmented pixels identical; max abs (relative) differences: "
          + torch_vae.diffs_text(r, (("lr schedule", "lr"), *torch_vae.STEP_DIFFS))
          + f", {stats}", flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
