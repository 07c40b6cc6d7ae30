"""Checks jaxgen's FID InceptionV3 and weight loader against PyTorch.

Not part of the test suite (CI has no torch). Three steps, two interpreters:

    python benchmarks/inception_torch_reference.py prepare --dir=/tmp/incref
    TORCH_PYTHON benchmarks/inception_torch_reference.py torch --dir=/tmp/incref
    python benchmarks/inception_torch_reference.py compare --dir=/tmp/incref

prepare (jax side) writes random weights with pytorch-fid's names and shapes
(BN running statistics random too, variance positive), random images, and the
same weights as .pth files from the tests' torch.save look-alike.
torch (torch only, no jax, no torchvision) checks that torch.load reads those
files; builds pytorch-fid's FID InceptionV3 re-implemented in plain torch.nn
(its resize_input, normalize_input, FIDInceptionA/C/E_1/E_2, torchvision's
Inception3 stem, B and D blocks, fc 2048 -> 1008), loads the weights strictly,
and writes pool3 features, logits and F.interpolate results, plus the weights
as torch.save writes them (zip and legacy formats).
compare (jax side) loads torch's own .pth files with jaxgen's loader, runs the
Flax port, and prints the differences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESIZE_SHAPES = [(28, 28, 1), (32, 32, 3), (7, 5, 3), (512, 384, 3), (600, 299, 3)]
FORWARD_SHAPES = {"cifar": (2, 32, 32, 3), "mnist": (2, 28, 28, 1)}


# --- prepare (jax side) ------------------------------------------------------

def prepare(out: Path) -> None:
  sys.path.insert(0, str(REPO))
  from tests.test_inception import (random_state_dict, write_torch_legacy,  # pylint: disable=g-import-not-at-top
                                    write_torch_zip)
  state = random_state_dict(seed=123)
  rng = np.random.default_rng(7)
  images = {f"images_{k}": rng.uniform(size=s).astype(np.float32)
            for k, s in FORWARD_SHAPES.items()}
  resize = {f"resize_{i}": rng.uniform(size=s).astype(np.float32)
            for i, s in enumerate(RESIZE_SHAPES)}
  out.mkdir(parents=True, exist_ok=True)
  np.savez(out / "weights.npz", **state)
  np.savez(out / "inputs.npz", **images, **resize)
  write_torch_zip(out / "writer_zip.pth", state)
  write_torch_legacy(out / "writer_legacy.pth", state)
  print(f"wrote {len(state)} arrays and inputs to {out}")


# --- torch side --------------------------------------------------------------

def torch_reference(out: Path) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)

  class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class FIDInceptionA(nn.Module):
    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
      self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
      b1 = self.branch1x1(x)
      b5 = self.branch5x5_2(self.branch5x5_1(x))
      b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
      return torch.cat([b1, b5, b3, bp], 1)

  class InceptionB(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3(x)
      bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class FIDInceptionC(nn.Module):
    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b1 = self.branch1x1(x)
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = x
      for i in range(1, 6):
        bd = getattr(self, f"branch7x7dbl_{i}")(bd)
      bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
      return torch.cat([b1, b7, bd, bp], 1)

  class InceptionD(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3_2(self.branch3x3_1(x))
      b7 = x
      for i in range(1, 5):
        b7 = getattr(self, f"branch7x7x3_{i}")(b7)
      return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class FIDInceptionE(nn.Module):
    def __init__(self, cin, pool):
      super().__init__()
      self.pool = pool
      self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
      self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
      self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b1 = self.branch1x1(x)
      b3 = self.branch3x3_1(x)
      b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
      bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
      if self.pool == "avg":   # FIDInceptionE_1
        pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
      else:                    # FIDInceptionE_2
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
      return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)

  class FIDInceptionV3(nn.Module):
    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
      self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
      self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
      self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
      self.Mixed_5b = FIDInceptionA(192, pool_features=32)
      self.Mixed_5c = FIDInceptionA(256, pool_features=64)
      self.Mixed_5d = FIDInceptionA(288, pool_features=64)
      self.Mixed_6a = InceptionB(288)
      self.Mixed_6b = FIDInceptionC(768, 128)
      self.Mixed_6c = FIDInceptionC(768, 160)
      self.Mixed_6d = FIDInceptionC(768, 160)
      self.Mixed_6e = FIDInceptionC(768, 192)
      self.Mixed_7a = InceptionD(768)
      self.Mixed_7b = FIDInceptionE(1280, "avg")
      self.Mixed_7c = FIDInceptionE(2048, "max")
      self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
      # pytorch-fid InceptionV3.forward: resize_input, normalize_input.
      x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
      x = 2 * x - 1
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = F.max_pool2d(x, kernel_size=3, stride=2)
      x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
      x = F.max_pool2d(x, kernel_size=3, stride=2)
      for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(self, f"Mixed_{name}")(x)
      pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
      return pool3, self.fc(pool3)   # torchvision: dropout (no-op in eval), fc

  weights = dict(np.load(out / "weights.npz"))
  inputs = dict(np.load(out / "inputs.npz"))

  # The tests' writer: torch.load must read its files and get the same arrays.
  for name in ("writer_zip.pth", "writer_legacy.pth"):
    loaded = torch.load(out / name, weights_only=True)
    assert set(loaded) == set(weights), name
    for k, v in weights.items():
      assert np.array_equal(loaded[k].numpy(), v) and loaded[k].numpy().dtype == v.dtype, (name, k)
    print(f"torch.load({name}): {len(loaded)} tensors identical to the generated arrays")

  model = FIDInceptionV3().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  n_params = sum(p.numel() for p in model.parameters())
  n_buffers = sum(b.numel() for k, b in model.named_buffers()
                  if not k.endswith("num_batches_tracked"))
  print(f"torch FID InceptionV3: {n_params:,} parameters + {n_buffers:,} BN running "
        f"statistics = {n_params + n_buffers:,} values; state_dict has "
        f"{len(model.state_dict())} entries ({len(weights)} generated)")

  results = {}
  with torch.no_grad():
    for key, images in inputs.items():
      x = torch.from_numpy(images).permute(0, 3, 1, 2) if images.ndim == 4 else \
          torch.from_numpy(images).permute(2, 0, 1)[None]
      if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)   # pytorch-fid's loaders convert to RGB
      if key.startswith("images_"):
        pool3, logits = model(x)
        results[f"pool3_{key[7:]}"] = pool3.numpy()
        results[f"logits_{key[7:]}"] = logits.numpy()
      else:
        resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        results[key] = resized[0].permute(1, 2, 0).numpy()
  np.savez(out / "torch_outputs.npz", **results)
  torch.save(model.state_dict(), out / "torch_zip.pth")
  torch.save(model.state_dict(), out / "torch_legacy.pth",
             _use_new_zipfile_serialization=False)
  print(f"wrote torch outputs and torch.save files to {out}")


# --- compare (jax side) ------------------------------------------------------

def _report(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
  diff = np.abs(np.asarray(ours, np.float64) - ref)
  scale = np.abs(ref).max()
  big = np.abs(ref) > 1e-3 * scale   # relative error of near-zeros is noise
  print(f"  {name:14s} max|ref| {scale:10.4g}  max abs diff {diff.max():.3g}  "
        f"max diff / max|ref| {diff.max() / scale:.3g}  "
        f"max elementwise rel diff (|ref| > 1e-3 max|ref|) "
        f"{(diff[big] / np.abs(ref[big])).max():.3g}")


def compare(out: Path) -> None:
  sys.path.insert(0, str(REPO))
  from jaxgen.evaluate import inception as inc  # pylint: disable=g-import-not-at-top
  from jaxgen.nets.inception import preprocess  # pylint: disable=g-import-not-at-top
  weights = dict(np.load(out / "weights.npz"))
  inputs = dict(np.load(out / "inputs.npz"))
  ref = dict(np.load(out / "torch_outputs.npz"))

  for name in ("torch_zip.pth", "torch_legacy.pth"):
    loaded = inc.load_torch_state_dict(out / name)
    tracked = [k for k in loaded if k.endswith("num_batches_tracked")]
    assert set(loaded) - set(tracked) == set(weights) - set(tracked), name
    assert all(np.array_equal(loaded[k], v) for k, v in weights.items()), name
    print(f"jaxgen loader read torch.save's {name}: {len(loaded)} arrays, identical")

  print("bilinear resize to 299x299 (then 2x-1 omitted), jax vs torch F.interpolate:")
  for i, shape in enumerate(RESIZE_SHAPES):
    key = f"resize_{i}"
    ours = (np.asarray(preprocess(inputs[key][None]))[0] + 1) / 2
    _report(f"{shape}", ours, ref[key])

  apply, info = inc.load_inception(out / "torch_legacy.pth")
  print(f"Flax port vs torch on the same random weights ({info['num_parameters']:,} values):")
  for k, shape in FORWARD_SHAPES.items():
    pool3, logits = apply(inputs[f"images_{k}"])
    print(f" images {shape}:")
    _report("pool3", np.asarray(pool3), ref[f"pool3_{k}"])
    _report("logits", np.asarray(logits), ref[f"logits_{k}"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("step", choices=["prepare", "torch", "compare"])
  parser.add_argument("--dir", type=Path, default=Path("/tmp/inception_torch_reference"))
  args = parser.parse_args()
  {"prepare": prepare, "torch": torch_reference, "compare": compare}[args.step](args.dir)


if __name__ == "__main__":
  main()
