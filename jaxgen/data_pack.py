"""A CIFAR-10 subset packed small, for a machine it must be copied to.

The official binary batches take 30.7 MB per 10,000 images; as lossless WebP
(tiles of 100 x 100 images) they take about 17 MB, so the first 30,000
training images and the test images fit a 64 MiB transfer (the GPU machines
lent to this project take no more). Unpacking writes the official binary
layout back and checks each file's md5 against the one taken when packing, so
a run reads the subset exactly as it would read the real files:

    python -m jaxgen.data_pack pack --data_dir=../shared/data --num_train=30000 \\
        --out=carry/cifar10
    python -m jaxgen.data_pack unpack --packed=carry/cifar10 --data_dir=/tmp/data
    JAXGEN_DATA_DIR=/tmp/data python run.py --config=configs/glow_cifar10.py:gpu

The unpacked training set is the first `num_train` records of
data_batch_1..5 in order, 10,000 per file; the files past the subset are
written empty (the loader reads 0 records from them), so a run's log shows
the smaller training set. README "Data" says what a subset changes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from jaxgen.data import (_CIFAR_DIR, _CIFAR_TRAIN, DataError, _raw_cifar_available,
                         cifar10_test_file, read_cifar10_bin)

TILE_IMAGES = 10_000          # images per WebP file: 100 x 100 (3,200 px square)
TILE_COLUMNS = 100
MANIFEST = "manifest.json"


def _md5(data: bytes) -> str:
  return hashlib.md5(data).hexdigest()


def _official_bytes(images_NHWC: np.ndarray, labels: np.ndarray) -> bytes:
  """The official binary layout: per image 1 label byte + 3072 CHW bytes."""
  records = np.empty((len(labels), 1 + 32 * 32 * 3), np.uint8)
  records[:, 0] = labels
  records[:, 1:] = images_NHWC.transpose(0, 3, 1, 2).reshape(len(labels), 32 * 32 * 3)
  return records.tobytes()


def _encode_tiles(images: np.ndarray) -> list[bytes]:
  """Images -> lossless WebP files of up to TILE_IMAGES images each, in
  rows of TILE_COLUMNS (the last row padded with black)."""
  tiles = []
  for start in range(0, len(images), TILE_IMAGES):
    images_NHWC = images[start:start + TILE_IMAGES]
    rows = -(-len(images_NHWC) // TILE_COLUMNS)
    padded = np.zeros((rows * TILE_COLUMNS, 32, 32, 3), np.uint8)
    padded[:len(images_NHWC)] = images_NHWC
    grid = (padded.reshape(rows, TILE_COLUMNS, 32, 32, 3)
            .transpose(0, 2, 1, 3, 4).reshape(rows * 32, TILE_COLUMNS * 32, 3))
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, "WEBP", lossless=True, quality=100, method=4)
    tiles.append(buffer.getvalue())
  return tiles


def _decode_tiles(tiles: list[bytes], count: int) -> np.ndarray:
  """Inverse of _encode_tiles: the first `count` images, [N, 32, 32, 3]."""
  images = []
  for tile in tiles:
    grid = np.asarray(Image.open(io.BytesIO(tile)).convert("RGB"))
    rows = grid.shape[0] // 32
    images.append(grid.reshape(rows, 32, TILE_COLUMNS, 32, 3)
                  .transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3))
  return np.concatenate(images)[:count] if images else np.zeros((0, 32, 32, 3), np.uint8)


def _write_split(out: Path, name: str, images_NHWC: np.ndarray, labels: np.ndarray
                 ) -> dict:
  files = []
  for i, tile in enumerate(_encode_tiles(images_NHWC)):
    files.append(f"{name}_{i}.webp")
    (out / files[-1]).write_bytes(tile)
  (out / f"{name}_labels.bin").write_bytes(labels.astype(np.uint8).tobytes())
  return {"count": len(labels), "tiles": files}


def pack(data_dir: str | Path, num_train: int, out: str | Path) -> dict:
  """Packs the first num_train training records and every test record of
  <data_dir>/cifar10 into `out`; returns the manifest it writes there."""
  folder = Path(data_dir) / "cifar10"
  if not _raw_cifar_available(folder):
    raise DataError(f"the official CIFAR-10 files are not all in {folder} "
                    f"({_CIFAR_DIR}/data_batch_1..5.bin and a test batch); "
                    "point --data_dir at the folder holding cifar10/.")
  test_path = cifar10_test_file(folder)
  train_images, train_labels = read_cifar10_bin(
      [folder / _CIFAR_DIR / f for f in _CIFAR_TRAIN])
  if not 0 < num_train <= len(train_labels):
    raise ValueError(f"--num_train={num_train}: must be in 1..{len(train_labels)}, "
                     "the training images at hand.")
  train_images, train_labels = train_images[:num_train], train_labels[:num_train]
  test_images, test_labels = read_cifar10_bin([test_path])
  test_file = str(test_path.relative_to(folder))
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  manifest = {
      "train": _write_split(out, "train", train_images, train_labels),
      "test": _write_split(out, "test", test_images, test_labels) | {"file": test_file},
      "md5": {name: _md5(data) for name, data in
              _official_files(train_images, train_labels, test_images, test_labels,
                              test_file).items()},
  }
  (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
  return manifest


def _official_files(train_images, train_labels, test_images, test_labels,
                    test_file: str) -> dict[str, bytes]:
  """Path under cifar10/ -> bytes of the official files holding these images:
  10,000 training images per batch file, in order (the files past them
  empty), and the test images under the test file's own name."""
  files = {f"{_CIFAR_DIR}/{name}": _official_bytes(
               train_images[i * 10_000:(i + 1) * 10_000],
               train_labels[i * 10_000:(i + 1) * 10_000])
           for i, name in enumerate(_CIFAR_TRAIN)}
  return files | {test_file: _official_bytes(test_images, test_labels)}


def unpack(packed: str | Path, data_dir: str | Path) -> Path:
  """Writes <data_dir>/cifar10/ in the official layout from a pack's folder,
  each file checked against the pack's md5; returns that folder."""
  packed = Path(packed)
  manifest_path = packed / MANIFEST
  if not manifest_path.exists():
    raise DataError(f"{packed} holds no {MANIFEST}: it is not a folder written "
                    "by `python -m jaxgen.data_pack pack`.")
  manifest = json.loads(manifest_path.read_text())

  def split(name):
    info = manifest[name]
    labels = np.frombuffer((packed / f"{name}_labels.bin").read_bytes(), np.uint8)
    if len(labels) != info["count"]:
      raise DataError(f"{packed / (name + '_labels.bin')} holds {len(labels)} "
                      f"labels, the manifest {info['count']}: the pack is "
                      "incomplete; pack it again.")
    tiles = [(packed / t).read_bytes() for t in info["tiles"]]
    return _decode_tiles(tiles, len(labels)), labels

  contents = _official_files(*split("train"), *split("test"), manifest["test"]["file"])
  # Every file checked before any is written: a corrupt pack leaves nothing.
  for relative, data in contents.items():
    if _md5(data) != manifest["md5"][relative]:
      raise DataError(f"unpacking {packed} gave a {relative} whose md5 is not the "
                      "one taken when packing: the pack is corrupt; pack it again.")
  folder = Path(data_dir) / "cifar10"
  (folder / _CIFAR_DIR).mkdir(parents=True, exist_ok=True)
  for relative, data in contents.items():
    (folder / relative).write_bytes(data)
  return folder


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  verbs = parser.add_subparsers(dest="verb", required=True)
  p = verbs.add_parser("pack", help="official files -> a small folder")
  p.add_argument("--data_dir", required=True, help="folder holding cifar10/")
  p.add_argument("--num_train", type=int, default=30_000)
  p.add_argument("--out", required=True)
  u = verbs.add_parser("unpack", help="a packed folder -> official files")
  u.add_argument("--packed", required=True)
  u.add_argument("--data_dir", required=True, help="cifar10/ is written here")
  args = parser.parse_args(argv)
  try:
    if args.verb == "pack":
      manifest = pack(args.data_dir, args.num_train, args.out)
      size = sum(f.stat().st_size for f in Path(args.out).iterdir())
      print(f"packed {manifest['train']['count']:,} training and "
            f"{manifest['test']['count']:,} test images into {args.out} "
            f"({size / 2**20:.1f} MiB)")
    else:
      folder = unpack(args.packed, args.data_dir)
      print(f"wrote {folder} (official layout, md5s checked)")
  except (DataError, ValueError) as e:
    parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
  main()
