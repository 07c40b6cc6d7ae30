"""Datasets as uint8 arrays, and batches cut from them on device.

MNIST and CIFAR-10 are small enough to live on the accelerator whole. A split is
loaded once as NHWC uint8, put on every device, and each training batch is a
jitted gather through a per-epoch permutation drawn from
`fold_in(data_key, epoch)`. Data loading then never limits speed, and the batch
of step s is a pure function of (seed, s): a resumed run sees the same data.

Sources:
  * "raw": the official files in `<data_dir>/<name>/` (IDX gzip for MNIST, the
    binary batches for CIFAR-10), read with numpy.
  * "tfds": TFDS's canonical `mnist` / `cifar10` builders. Offline, the MNIST
    builder is handed the official files as its manual dir (they are the bytes
    it would download, so its checksums pass). TFDS writes its train split in a
    hashed order; we restore the official file order so both routes give
    identical arrays.
  * "auto": MNIST through TFDS (fed the local files when present), CIFAR-10 from
    the local binary batches when present, else TFDS.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen import sharding

DATA_DIR_ENV = "JAXGEN_DATA_DIR"


class DataError(RuntimeError):
  """A dataset could not be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  class_names: tuple[str, ...]


SPECS = {
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, 60_000, 10_000,
                         tuple(str(i) for i in range(10))),
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 10, 50_000, 10_000,
                           ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck")),
}

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
# The full official test batch, or (as in ../shared/data) its first 1,000
# records beside the batches folder; paths relative to <data_dir>/cifar10/.
_CIFAR_TEST_CANDIDATES = (f"{_CIFAR_DIR}/test_batch.bin", "test_batch.bin",
                          "test_batch_first1000.bin",
                          f"{_CIFAR_DIR}/test_batch_first1000.bin")


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8, NHWC
  labels: np.ndarray  # int32, N

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  spec: DatasetSpec
  train: Split
  test: Split
  source: str          # where the arrays came from, for the run's records
  test_note: str = ""  # e.g. "first 1,000 test images" when the split is partial

  def split(self, name: str) -> Split:
    if name not in ("train", "test"):
      raise ValueError(f"unknown split {name!r}: use 'train' or 'test'")
    return getattr(self, name)


def spec(name: str) -> DatasetSpec:
  if name not in SPECS:
    raise DataError(f"unknown dataset {name!r}: jaxgen knows {sorted(SPECS)}")
  return SPECS[name]


# ----------------------------------------------------------------------------
# Raw official files.


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (optionally gzipped): the format MNIST is published in."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic "
                    f"number); re-download the official MNIST files.")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(dims)):
    raise DataError(f"{path} is truncated or corrupt: header says {dims}, "
                    f"file holds {len(raw) - offset} bytes of data.")
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def read_cifar10_bin(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
  """Reads CIFAR-10 binary batches: records of 1 label byte + 3072 CHW bytes."""
  record = 1 + 32 * 32 * 3
  chunks = []
  for path in paths:
    data = np.fromfile(path, np.uint8)
    if data.size % record:
      raise DataError(f"{path} is not a CIFAR-10 binary batch: its size "
                      f"{data.size} is not a multiple of {record} bytes.")
    chunks.append(data.reshape(-1, record))
  records = np.concatenate(chunks)
  labels = records[:, 0].astype(np.int32)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _raw_mnist_available(folder: Path) -> bool:
  return all((folder / f).exists() for pair in _MNIST_FILES.values() for f in pair)


def _raw_cifar_available(folder: Path) -> bool:
  root = folder / _CIFAR_DIR
  return (all((root / f).exists() for f in _CIFAR_TRAIN)
          and any((folder / f).exists() for f in _CIFAR_TEST_CANDIDATES))


def cifar10_test_file(folder: Path) -> Path:
  """The test batch in <data_dir>/cifar10 (full, or its first 1,000 records);
  call after _raw_cifar_available."""
  return next(folder / f for f in _CIFAR_TEST_CANDIDATES if (folder / f).exists())


def _raw_available(name: str, folder: Path | None) -> bool:
  if folder is None:
    return False
  check = _raw_mnist_available if name == "mnist" else _raw_cifar_available
  return check(folder / name)


def load_raw(name: str, data_dir: str | os.PathLike) -> Dataset:
  """Loads a dataset from its official files in `<data_dir>/<name>/`."""
  folder = Path(data_dir) / name
  if not _raw_available(name, Path(data_dir)):
    raise DataError(f"the official {name} files are not in {folder} "
                    f"(see README, 'Data').")
  if name == "mnist":
    splits = {}
    for split, (img_file, lbl_file) in _MNIST_FILES.items():
      images = read_idx(folder / img_file)[..., None]
      labels = read_idx(folder / lbl_file).astype(np.int32)
      splits[split] = Split(images, labels)
    return Dataset(SPECS[name], splits["train"], splits["test"],
                   source=f"raw:{folder}")
  root = folder / _CIFAR_DIR
  train = Split(*read_cifar10_bin([root / f for f in _CIFAR_TRAIN]))
  test = Split(*read_cifar10_bin([cifar10_test_file(folder)]))
  note = "" if len(test) == SPECS[name].num_test else (
      f"first {len(test):,} test images")
  return Dataset(SPECS[name], train, test, source=f"raw:{root}", test_note=note)


# ----------------------------------------------------------------------------
# TFDS.


def _tfds_file_order(split: str, n: int) -> np.ndarray:
  """The permutation TFDS applied when it wrote a split of n keyed examples.

  TFDS's GeneratorBasedBuilder sorts examples by an md5 of their key salted
  with the split name; MNIST and CIFAR-10 key examples by their index in the
  official files. `tfds_array[k] == file_array[order[k]]`.
  """
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top
  hasher = hashing.Hasher(split)
  hashes = [hasher.hash_key(i) for i in range(n)]
  return np.array(sorted(range(n), key=hashes.__getitem__))


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def load_tfds(name: str, tfds_dir: str | None = None,
              manual_dir: str | os.PathLike | None = None) -> Dataset:
  """Loads a dataset through TFDS's canonical builder, in official file order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=tfds_dir)
  if not builder.is_prepared():
    manual_ok = manual_dir is not None and _raw_available(name, Path(manual_dir).parent)
    if not manual_ok and not _online():
      raise _missing_data_error(name, manual_dir, builder.data_dir)
    config = None
    if manual_ok:
      config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    builder.download_and_prepare(download_config=config)
  splits = {}
  for split in ("train", "test"):
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = arrays["image"], arrays["label"].astype(np.int32)
    order = _tfds_file_order(split, len(labels))
    file_images, file_labels = np.empty_like(images), np.empty_like(labels)
    file_images[order], file_labels[order] = images, labels
    splits[split] = Split(file_images, file_labels)
  return Dataset(SPECS[name], splits["train"], splits["test"],
                 source=f"tfds:{builder.data_dir}")


def _missing_data_error(name: str, manual_dir, tfds_dir) -> DataError:
  expected = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
              if name == "mnist" else
              f"{_CIFAR_DIR}/data_batch_1..5.bin and {_CIFAR_DIR}/test_batch.bin")
  where = f" (looked in {manual_dir})" if manual_dir else ""
  return DataError(
      f"{name} is not available: no local files{where}, no prepared TFDS copy "
      f"in {tfds_dir}, and no network to download it.\nDo one of:\n"
      f"  1. put the official files ({expected}) in <dir>/{name}/ and set "
      f"{DATA_DIR_ENV}=<dir> or pass --config.data.dir=<dir>;\n"
      f"  2. connect to the internet once, so TFDS can download and prepare "
      f"{name} (then it works offline).")


def resolve_data_dir(configured: str | None) -> Path | None:
  value = configured or os.environ.get(DATA_DIR_ENV)
  return Path(value).expanduser() if value else None


def load(name: str, data_dir: str | None = None, source: str = "auto",
         tfds_dir: str | None = None) -> Dataset:
  """Loads train and test splits of `name` as uint8 NHWC arrays in file order.

  Args:
    name: "mnist" or "cifar10".
    data_dir: folder holding `<name>/` with the official files; defaults to
      $JAXGEN_DATA_DIR.
    source: "auto", "raw" or "tfds" (see the module docstring).
    tfds_dir: TFDS data dir (None: TFDS's default, ~/tensorflow_datasets).
  """
  spec(name)
  folder = resolve_data_dir(data_dir)
  if source not in ("auto", "raw", "tfds"):
    raise DataError(f"data.source must be 'auto', 'raw' or 'tfds', not {source!r}")
  if source == "raw" or (source == "auto" and name == "cifar10"
                         and _raw_available(name, folder)):
    if not _raw_available(name, folder):
      raise _missing_data_error(name, folder / name if folder else None,
                                tfds_dir or "~/tensorflow_datasets")
    return load_raw(name, folder)
  if name == "cifar10" and source == "auto":
    # TFDS's cifar10 builder wants its own tarball, which we cannot hand it.
    return load_tfds(name, tfds_dir)
  return load_tfds(name, tfds_dir, manual_dir=folder / name if folder else None)


# ----------------------------------------------------------------------------
# Pixel transforms (pure, jittable).


def augment(key: jax.Array, x_BHWC: jax.Array, max_shift: int, flip: bool
            ) -> jax.Array:
  """Random translation by up to max_shift pixels, optional horizontal flip."""
  b, h, w, _ = x_BHWC.shape
  shift_key, flip_key = jax.random.split(key)
  if max_shift:
    padded = jnp.pad(x_BHWC, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)))
    offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * max_shift + 1)
    x_BHWC = jax.vmap(lambda img, o: jax.lax.dynamic_slice(
        img, (o[0], o[1], 0), (h, w, img.shape[-1])))(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
    x_BHWC = jnp.where(mirror, x_BHWC[:, :, ::-1], x_BHWC)
  return x_BHWC


def binarize(key: jax.Array, images_u8: jax.Array) -> jax.Array:
  """Draws each pixel as Bernoulli(intensity / 255): dynamic binarization.

  Returns float32 in {0, 1}. On images already binarized to {0, 255} this is
  the identity, which is how the once-binarized test set passes through the
  same code path.
  """
  return jax.random.bernoulli(key, images_u8.astype(jnp.float32) / 255.0).astype(
      jnp.float32)


def binarize_once(images_u8: np.ndarray, seed: int) -> np.ndarray:
  """A fixed binarization of a whole split, as uint8 in {0, 255}.

  The key of image i is fold_in(PRNGKey(seed), i), so the result does not
  depend on batch size or device count.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
      jnp.arange(len(images_u8)))
  bits = jax.jit(jax.vmap(binarize))(keys, jnp.asarray(images_u8))
  return np.asarray(bits, np.uint8) * 255


# ----------------------------------------------------------------------------
# Batches.


class TrainBatches:
  """Training batches of a split, held on device, as a pure function of step.

  Batch s is examples perm_e[i*B:(i+1)*B] with e = s // steps_per_epoch,
  i = s % steps_per_epoch and perm_e = permutation(fold_in(key, e), N). The
  last partial batch of each epoch is dropped.
  """

  def __init__(self, split: Split, global_batch: int, mesh: Mesh, key: jax.Array):
    sharding.check_divisible(global_batch, mesh, "train.batch_size")
    if global_batch > len(split):
      raise DataError(f"train.batch_size={global_batch} exceeds the "
                      f"{len(split)} training examples")
    self.global_batch = global_batch
    self.num_examples = len(split)
    self.steps_per_epoch = len(split) // global_batch
    self._key = key
    self._arrays = sharding.put_replicated(
        {"image": split.images, "label": split.labels}, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    self._permute = jax.jit(
        lambda k: jax.random.permutation(k, self.num_examples),
        out_shardings=replicated)
    self._gather = jax.jit(
        functools.partial(_gather_batches, batch_size=global_batch, count=None),
        out_shardings=batch_sharding)
    self._gather_stacked = jax.jit(
        functools.partial(_gather_batches, batch_size=global_batch),
        static_argnames="count", out_shardings=sharding.stacked_batch_sharding(mesh))
    self._epoch, self._perm = None, None

  def epoch_of(self, step: int) -> int:
    return step // self.steps_per_epoch

  def _permutation(self, step: int) -> jax.Array:
    epoch = self.epoch_of(step)
    if epoch != self._epoch:
      self._perm = self._permute(jax.random.fold_in(self._key, epoch))
      self._epoch = epoch
    return self._perm

  def _start(self, step: int) -> int:
    return (step % self.steps_per_epoch) * self.global_batch

  def __call__(self, step: int) -> dict[str, jax.Array]:
    return self._gather(self._arrays, self._permutation(step), self._start(step))

  def stacked(self, step: int, count: int) -> dict[str, jax.Array]:
    """Batches step .. step + count - 1 as one [count, B, ...] array each,
    gathered in one call (for train.steps_per_dispatch). They must lie in one
    epoch; batch i equals self(step + i)."""
    if self.epoch_of(step) != self.epoch_of(step + count - 1):
      raise ValueError(f"steps {step}..{step + count - 1} span two epochs of "
                       f"{self.steps_per_epoch} steps; take them one by one")
    return self._gather_stacked(self._arrays, self._permutation(step),
                                self._start(step), count=count)


def _gather_batches(arrays, perm, start, *, batch_size, count):
  """One batch (count=None) or `count` consecutive ones stacked."""
  idx = jax.lax.dynamic_slice(perm, (start,), (batch_size * (count or 1),))
  if count is not None:
    idx = idx.reshape(count, batch_size)
  return jax.tree.map(lambda a: a[idx], arrays)


def eval_batches(split: Split, global_batch: int, mesh: Mesh
                 ) -> Iterator[dict[str, jax.Array]]:
  """The whole split in order, padded to full batches.

  Each batch carries 'index' (position in the split) and 'mask' (False on
  padding), so exact means over the split can be taken whatever the batch size.
  """
  sharding.check_divisible(global_batch, mesh, "eval.batch_size")
  n = len(split)
  for start in range(0, n, global_batch):
    stop = min(start + global_batch, n)
    pad = global_batch - (stop - start)
    index = np.arange(start, start + global_batch, dtype=np.int32)
    batch = {
        "image": np.concatenate([split.images[start:stop],
                                 np.zeros((pad, *split.images.shape[1:]), np.uint8)]),
        "label": np.concatenate([split.labels[start:stop], np.zeros(pad, np.int32)]),
        "index": index,
        "mask": index < n,
    }
    yield sharding.put_batch(batch, mesh)


def timed_load(config_data) -> tuple[Dataset, float]:
  """Loads the dataset a config names; returns it with the seconds it took."""
  start = time.perf_counter()
  dataset = load(config_data.name, config_data.dir, config_data.source,
                 config_data.tfds_dir)
  return dataset, time.perf_counter() - start
