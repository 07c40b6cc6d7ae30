"""Data: both MNIST routes agree, CIFAR-10 reads, batches are a pure function of step."""

import time

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR
from jaxgen import data, data_pack, sharding


def test_mnist_raw_files_match_tfds_builder(mnist, tmp_path):
  # The TFDS route hands the official files to TFDS's own mnist builder (its
  # checksums pass) and restores file order from TFDS's hashed order.
  via_tfds = data.load("mnist", str(DATA_DIR), source="tfds",
                       tfds_dir=str(tmp_path / "tfds"))
  assert via_tfds.source.startswith("tfds:")
  for split in ("train", "test"):
    raw, tf = mnist.split(split), via_tfds.split(split)
    assert raw.images.shape == tf.images.shape
    assert raw.images.dtype == tf.images.dtype == np.uint8
    np.testing.assert_array_equal(raw.images, tf.images)
    np.testing.assert_array_equal(raw.labels, tf.labels)


def test_mnist_raw_shapes(mnist):
  assert mnist.train.images.shape == (60_000, 28, 28, 1)
  assert mnist.test.images.shape == (10_000, 28, 28, 1)
  assert set(np.unique(mnist.train.labels)) == set(range(10))
  assert mnist.test_note == ""


def test_cifar10_official_binary_batches():
  cifar = data.load("cifar10", str(DATA_DIR))  # auto: local batches first
  assert cifar.source.startswith("raw:")
  assert cifar.train.images.shape == (50_000, 32, 32, 3)
  assert cifar.train.images.dtype == np.uint8
  assert np.bincount(cifar.train.labels).tolist() == [5_000] * 10
  # ../shared/data holds the first 1,000 official test images; say so.
  assert len(cifar.test) in (1_000, 10_000)
  assert (cifar.test_note != "") == (len(cifar.test) == 1_000)


def test_missing_data_is_a_fast_clear_error(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DataError) as info:
    data.load("mnist", str(tmp_path / "empty"), tfds_dir=str(tmp_path / "tfds"))
  elapsed = time.perf_counter() - start
  message = str(info.value)
  assert elapsed < 10, f"took {elapsed:.1f}s to report missing data"
  assert data.DATA_DIR_ENV in message and "--config.data.dir" in message
  assert "internet" in message
  assert "train-images-idx3-ubyte.gz" in message




def test_train_batches_are_a_pure_function_of_step(mnist, num_devices):
  mesh = sharding.make_mesh(num_devices)
  key = jax.random.PRNGKey(3)
  batches = data.TrainBatches(mnist.train, 256, mesh, key)
  again = data.TrainBatches(mnist.train, 256, mesh, key)
  steps_per_epoch = batches.steps_per_epoch
  assert steps_per_epoch == 60_000 // 256
  # Same step -> same batch, in any call order (as after a resume).
  late = steps_per_epoch + 5
  np.testing.assert_array_equal(batches(late)["label"], again(late)["label"])
  np.testing.assert_array_equal(batches(5)["image"], again(5)["image"])
  # Sharded over the 'data' axis.
  assert batches(0)["image"].sharding.spec == sharding.batch_sharding(mesh).spec
  # One epoch visits distinct examples; the next epoch is a new order.
  labels_epoch0 = np.concatenate([batches(s)["label"] for s in range(steps_per_epoch)])
  assert len(labels_epoch0) == steps_per_epoch * 256
  assert np.bincount(labels_epoch0).sum() == len(labels_epoch0)
  assert not np.array_equal(batches(0)["label"], batches(steps_per_epoch)["label"])


def test_stacked_batches_equal_the_single_ones(mnist, num_devices):
  mesh = sharding.make_mesh(num_devices)
  batches = data.TrainBatches(mnist.train, 256, mesh, jax.random.PRNGKey(3))
  start = batches.steps_per_epoch + 3  # not the first epoch: its own permutation
  stacked = batches.stacked(start, 4)
  assert stacked["image"].shape == (4, 256, 28, 28, 1)
  assert stacked["image"].sharding.spec == sharding.stacked_batch_sharding(mesh).spec
  for i in range(4):
    single = batches(start + i)
    for name in ("image", "label"):
      np.testing.assert_array_equal(stacked[name][i], single[name])
  with pytest.raises(ValueError, match="span two epochs"):
    batches.stacked(batches.steps_per_epoch - 2, 4)


def test_epoch_permutation_covers_each_example_once(mnist):
  mesh = sharding.make_mesh(1)
  key = jax.random.PRNGKey(0)
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 60_000))
  batches = data.TrainBatches(mnist.train, 1000, mesh, key)
  images = np.concatenate([np.asarray(batches(s)["image"]) for s in range(60)])
  np.testing.assert_array_equal(images, mnist.train.images[perm])


def test_batch_not_divisible_by_devices_is_clear(mnist, num_devices):
  mesh = sharding.make_mesh(num_devices)
  with pytest.raises(sharding.ShardingError) as info:
    data.TrainBatches(mnist.train, 100, mesh, jax.random.PRNGKey(0))
  message = str(info.value)
  assert "train.batch_size=100" in message and "8 devices" in message
  assert "--config.train.batch_size=96 or 104" in message


def test_eval_batches_pad_and_mask(mnist, num_devices):
  mesh = sharding.make_mesh(num_devices)
  batches = list(data.eval_batches(mnist.test, 2400, mesh))
  assert len(batches) == 5  # 4 full + 1 padded
  masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
  index = np.concatenate([np.asarray(b["index"]) for b in batches])
  assert masks.sum() == 10_000 and not masks[10_000:].any()
  np.testing.assert_array_equal(index[masks], np.arange(10_000))
  images = np.concatenate([np.asarray(b["image"]) for b in batches])[masks]
  np.testing.assert_array_equal(images, mnist.test.images)


def test_binarize_once_is_fixed_and_binary(mnist):
  images = mnist.test.images[:500]
  a = data.binarize_once(images, seed=0)
  b = data.binarize_once(images, seed=0)
  c = data.binarize_once(images, seed=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert set(np.unique(a)) <= {0, 255}
  # Pixel i of image n depends only on (seed, n), not on the batch it is in.
  np.testing.assert_array_equal(data.binarize_once(images[:100], seed=0), a[:100])
  # Mean intensity is preserved in expectation.
  assert abs(a.mean() / 255 - images.mean() / 255) < 0.01
  # Dynamic binarization is the identity on an already-binary image.
  again = data.binarize(jax.random.PRNGKey(9), a)
  np.testing.assert_array_equal(np.asarray(again) * 255, a)


def test_corrupt_idx_file_is_named(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  bad = tmp_path / "bad.gz"
  with gzip.open(bad, "wb") as f:
    f.write(bytes([0, 0, 8, 3, 0, 0, 0, 9]))  # header claims 9 images, no dims
  with pytest.raises(data.DataError, match="truncated or corrupt"):
    data.read_idx(bad)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
    ({"SLURM_NTASKS": "1"}, None),           # one task: not multi-host
    ({"SLURM_NTASKS": "4"}, "SLURM_NTASKS"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_SIZE"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU_WORKER_HOSTNAMES"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
])
def test_multihost_environment_detection(monkeypatch, env, expected):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
               "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert sharding.multihost_environment() == expected
  if expected is None:
    assert sharding.maybe_initialize_distributed() is False


def test_packed_cifar10_subset_unpacks_to_the_official_bytes(tmp_path, monkeypatch,
                                                             capsys):
  # The first 150 training images (two WebP tiles' worth of rows: 100 + 50)
  # and the test images; unpacked, the loader reads exactly those records.
  monkeypatch.setattr(data_pack, "TILE_IMAGES", 100)   # two tiles, one partial
  manifest = data_pack.pack(DATA_DIR, 150, tmp_path / "packed")
  assert manifest["train"]["tiles"] == ["train_0.webp", "train_1.webp"]
  folder = data_pack.unpack(tmp_path / "packed", tmp_path / "data")
  official = data.load("cifar10", str(DATA_DIR), source="raw")
  subset = data.load("cifar10", str(tmp_path / "data"), source="raw")
  np.testing.assert_array_equal(subset.train.images, official.train.images[:150])
  np.testing.assert_array_equal(subset.train.labels, official.train.labels[:150])
  np.testing.assert_array_equal(subset.test.images, official.test.images)
  assert (folder / "cifar-10-batches-bin" / "data_batch_2.bin").stat().st_size == 0
  # A damaged pack is refused, naming what to do, and writes nothing wrong.
  tile = tmp_path / "packed" / "train_1.webp"
  grid = np.asarray(Image.open(tile)).copy()
  grid[0, 0] ^= 1
  Image.fromarray(grid).save(tile, "WEBP", lossless=True)
  with pytest.raises(data.DataError, match="corrupt; pack it again"):
    data_pack.unpack(tmp_path / "packed", tmp_path / "data2")
  assert not (tmp_path / "data2").exists()
  with pytest.raises(data.DataError, match="not a folder written"):
    data_pack.unpack(tmp_path, tmp_path / "data3")
  # From the command line: the message and exit status 2, no traceback.
  with pytest.raises(SystemExit) as exit_info:
    data_pack.main(["unpack", f"--packed={tmp_path}", f"--data_dir={tmp_path / 'data3'}"])
  assert exit_info.value.code == 2
  assert "error: " in capsys.readouterr().err
