"""FID InceptionV3 port and its torch-free weight loader, with generated weights.

No torch here (CI has none): the .pth files are written by a small writer that
produces what torch.save does (zip: archive/data.pkl with persistent storage
ids, archive/data/<key>, archive/version; legacy: magic, protocol, sys_info,
pickle, storage keys, raw storages). benchmarks/inception_torch_reference.py
checks that torch.load reads these files and that the Flax network matches a
torch re-implementation of pytorch-fid on the same weights.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.evaluate import inception as inc
from jaxgen.nets.inception import preprocess

# Parameters + BatchNorm running statistics of pytorch-fid's FID InceptionV3
# (aux head excluded, fc 2048 -> 1008, num_batches_tracked excluded), as
# counted on the torch reference (benchmarks/inception_torch_reference.py).
FID_INCEPTION_NUM_VALUES = 23_885_392
NUM_BASIC_CONVS = 94   # conv + bn per BasicConv2d: 5 state dict entries each


# --- a torch.save look-alike ------------------------------------------------

class _Global:
  """Pickled as GLOBAL module.name without importing it (torch is absent)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):   # save_reduce insists on a callable
    raise NotImplementedError


class _StorageRef:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Strided:
  """A tensor viewing a shared storage at an offset with given strides."""

  def __init__(self, storage: _StorageRef, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.float64): "DoubleStorage"}


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles arrays as torch tensors: _rebuild_tensor_v2(storage, offset, size,
  stride, requires_grad, hooks) with the storage as a persistent id."""
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages: dict[str, _StorageRef] = {}   # in the order first pickled

  def _save_global(self, obj: _Global) -> None:
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = _save_global

  def reducer_override(self, obj: Any) -> Any:
    if isinstance(obj, _Strided):
      storage, offset, size, stride = obj.storage, obj.offset, obj.size, obj.stride
    elif isinstance(obj, np.ndarray):
      storage = _StorageRef(str(len(self.storages)), np.ascontiguousarray(obj).ravel())
      offset, size = 0, obj.shape
      stride = tuple(int(np.prod(obj.shape[i + 1:])) for i in range(obj.ndim))
    else:
      return NotImplemented
    args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    return _Global("torch._utils", "_rebuild_tensor_v2"), args

  def persistent_id(self, obj: Any) -> Any:
    if not isinstance(obj, _StorageRef):
      return None
    self.storages.setdefault(obj.key, obj)
    storage_type = _Global("torch", _STORAGE_NAMES[obj.array.dtype])
    pid = ("storage", storage_type, obj.key, "cpu", obj.array.size)
    return pid + (None,) if self.legacy else pid


def write_torch_zip(path: Path, state: dict[str, Any]) -> None:
  """torch.save's zip layout (torch >= 1.6), uncompressed like torch writes it."""
  buf = io.BytesIO()
  pickler = _TorchPickler(buf, legacy=False)
  pickler.dump(state)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, storage in pickler.storages.items():
      z.writestr(f"archive/data/{key}", storage.array.tobytes())
    z.writestr("archive/version", "3\n")


def write_torch_legacy(path: Path, state: dict[str, np.ndarray]) -> None:
  """torch.save(..., _use_new_zipfile_serialization=False)."""
  buf = io.BytesIO()
  for header in (0x1950A86A20F9469CFC6C, 1001,
                 {"protocol_version": 1001, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
    pickle.dump(header, buf, protocol=2)
  pickler = _TorchPickler(buf, legacy=True)
  pickler.dump(state)
  pickle.dump(list(pickler.storages), buf, protocol=2)
  for s in pickler.storages.values():
    buf.write(struct.pack("<q", s.array.size) + s.array.tobytes())
  path.write_bytes(buf.getvalue())


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """pytorch-fid's names and shapes, random values with sane activations:
  He-scaled convs, BN statistics random with positive variance, plus the
  int64 num_batches_tracked scalars real state dicts carry."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in inc.state_dict_shapes().items():
    if name.endswith("conv.weight"):
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif name.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("bn.running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif name.endswith(("bn.bias", "bn.running_mean")):
      value = rng.normal(0.0, 0.2, shape)
    else:  # fc
      value = rng.standard_normal(shape) * 0.02
    state[name] = value.astype(np.float32)
    if name.endswith("bn.running_var"):
      state[name.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
  return state


# --- the state dict table ---------------------------------------------------

def test_state_dict_table_matches_pytorch_fid():
  shapes = inc.state_dict_shapes()
  assert len(shapes) == 5 * NUM_BASIC_CONVS + 2
  assert sum(int(np.prod(s)) for s in shapes.values()) == FID_INCEPTION_NUM_VALUES
  # Spot checks against torchvision's / pytorch-fid's layer definitions.
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_6b.branch7x7_3.conv.weight"] == (192, 128, 7, 1)
  assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
  assert shapes["Mixed_7b.branch1x1.conv.weight"] == (320, 1280, 1, 1)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
  assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
  assert not any(k.startswith("AuxLogits") for k in shapes)


# --- file formats -----------------------------------------------------------

def _assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]):
  assert set(loaded) == set(expected)
  for k, v in expected.items():
    assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
  return random_state_dict()


def test_torch_zip_round_trip(state, tmp_path):
  path = tmp_path / "w.pth"
  write_torch_zip(path, state)
  _assert_same(inc.load_torch_state_dict(path), state)


def test_torch_legacy_round_trip(state, tmp_path):
  path = tmp_path / "w.pth"
  write_torch_legacy(path, state)
  _assert_same(inc.load_torch_state_dict(path), state)


def test_npz_round_trip(state, tmp_path):
  path = tmp_path / "w.npz"
  np.savez(path, **state)
  _assert_same(inc.load_torch_state_dict(path), state)


def test_views_with_offset_and_stride(tmp_path):
  # Tensors that share a storage (e.g. saved slices) carry offset and stride.
  base = _StorageRef("0", np.arange(24, dtype=np.float32))
  state = {"whole": _Strided(base, 0, (2, 3, 4), (12, 4, 1)),
           "transposed_tail": _Strided(base, 12, (4, 3), (1, 4)),
           "scalar": _Strided(base, 5, (), ())}
  write_torch_zip(tmp_path / "v.pth", state)
  loaded = inc.load_torch_state_dict(tmp_path / "v.pth")
  flat = np.arange(24, dtype=np.float32)
  np.testing.assert_array_equal(loaded["whole"], flat.reshape(2, 3, 4))
  np.testing.assert_array_equal(loaded["transposed_tail"], flat[12:].reshape(3, 4).T)
  assert loaded["scalar"].shape == () and loaded["scalar"] == 5.0


def test_loader_errors_name_the_file(state, tmp_path):
  with pytest.raises(ValueError, match="no such file"):
    inc.load_torch_state_dict(tmp_path / "absent.pth")
  junk = tmp_path / "junk.pth"
  junk.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(ValueError, match="junk.pth"):
    inc.load_torch_state_dict(junk)
  good = tmp_path / "good.pth"
  write_torch_zip(good, {"a": np.ones(3, np.float32)})
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(good.read_bytes()[:-200])
  with pytest.raises(ValueError, match="truncated.pth"):
    inc.load_torch_state_dict(truncated)
  legacy = tmp_path / "legacy.pth"
  write_torch_legacy(legacy, {"a": np.ones(30, np.float32)})
  cut = tmp_path / "cut.pth"
  cut.write_bytes(legacy.read_bytes()[:-8])
  with pytest.raises(ValueError, match="cut.pth"):
    inc.load_torch_state_dict(cut)


def test_loader_refuses_code_in_the_pickle(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))
  with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"a": Evil()}, protocol=2))
  with pytest.raises(ValueError, match=r"unexpected object .*print"):
    inc.load_torch_state_dict(tmp_path / "evil.pth")


def test_params_from_state_dict_errors(state):
  missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7_2.bn.bias"}
  with pytest.raises(ValueError, match=r"missing: Mixed_6c\.branch7x7_2\.bn\.bias"):
    inc.params_from_state_dict(missing)
  extra = dict(state, **{"AuxLogits.fc.weight": np.zeros((1008, 768), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected: AuxLogits\.fc\.weight"):
    inc.params_from_state_dict(extra)
  wrong = dict(state, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match=r"wrong shape: fc\.weight: \(1000, 2048\)"):
    inc.params_from_state_dict(wrong)


def test_params_round_trip_through_flax_layout(state):
  params = inc.params_from_state_dict(state)
  kernel = params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  assert kernel.shape == (1, 7, 128, 128)   # HWIO
  back = inc.state_dict_from_params(params)
  _assert_same(back, {k: v for k, v in state.items()
                      if not k.endswith("num_batches_tracked")})


# --- preprocessing and forward pass -----------------------------------------

def _torch_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """F.interpolate(mode="bilinear", align_corners=False) on [H, W, C], written
  out: source coordinate (dst + 0.5) * in/out - 0.5, clamped below at 0."""
  def taps(n_in: int, n_out: int):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo
  (y0, y1, wy), (x0, x1, wx) = taps(x.shape[0], out_h), taps(x.shape[1], out_w)
  rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
  return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (7, 5, 3)])
def test_preprocess_matches_torch_bilinear(shape):
  image = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
  out = np.asarray(preprocess(image[None]))[0]
  assert out.shape == (299, 299, 3)
  expected = _torch_bilinear(np.repeat(image, 3 // shape[-1], -1), 299, 299)
  np.testing.assert_allclose(out, 2 * expected - 1, atol=1e-5)


@pytest.fixture(scope="module")
def inception(state, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "weights.pth"
  write_torch_zip(path, state)
  return inc.load_inception(path)


def test_forward_shapes_and_determinism(inception, state):
  apply, info = inception
  assert info["num_parameters"] == FID_INCEPTION_NUM_VALUES
  assert info["matches_official_hash_prefix"] is None   # not the official file
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 299, 299, 3))
  pool3, logits = apply(images)
  assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(pool3)) and np.all(np.isfinite(logits))
  assert float(jnp.min(pool3)) >= 0.0          # mean of ReLU outputs
  assert float(jnp.std(pool3)) > 1e-3          # not a dead network
  # The fc layer reads pool3 (checks the [1008, 2048] -> Dense transpose).
  expected = np.asarray(pool3, np.float64) @ state["fc.weight"].T.astype(np.float64)
  np.testing.assert_allclose(logits, expected + state["fc.bias"], rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())
  pool3_again, logits_again = apply(images)
  np.testing.assert_array_equal(pool3, pool3_again)
  np.testing.assert_array_equal(logits, logits_again)


def test_forward_small_and_grayscale_images(inception):
  apply, _ = inception
  gray = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
  pool3, logits = apply(gray)
  assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
  pool3_rgb, _ = apply(jnp.repeat(gray, 3, axis=-1))
  np.testing.assert_array_equal(pool3, pool3_rgb)
  pool3_cifar, logits_cifar = apply(jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3)))
  assert pool3_cifar.shape == (2, 2048) and logits_cifar.shape == (2, 1008)
  assert not np.allclose(pool3_cifar, pool3)


# --- Inception Score --------------------------------------------------------

def test_inception_score_uniform_is_one():
  mean, std = inc.inception_score(np.zeros((20, 1008)), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 7, 1008])
def test_inception_score_one_hot_over_k_classes_is_k(k):
  # Each split holds every one of k classes equally often: p(y) uniform on k
  # classes, KL(onehot || p(y)) = log k for every image, so IS = k exactly.
  splits, per_class = 4, 2
  labels = np.tile(np.arange(k), splits * per_class)
  logits = np.zeros((len(labels), 1008))
  logits[np.arange(len(labels)), labels] = 1e4   # softmax is exactly one-hot
  mean, std = inc.inception_score(logits, splits=splits)
  assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_bounds_and_errors():
  logits = np.random.default_rng(0).normal(size=(50, 1008)) * 3
  mean, std = inc.inception_score(logits, splits=5)
  assert 1.0 < mean < 1008 and std >= 0
  with pytest.raises(ValueError, match="splits"):
    inc.inception_score(logits, splits=51)
  with pytest.raises(ValueError, match="logits"):
    inc.inception_score(np.zeros(10))


# --- through evaluation -----------------------------------------------------

def test_eval_json_gets_fid_kid_and_inception_score(state, mnist, tmp_path,
                                                    monkeypatch):
  """Generated weights through --mode=eval's code path: the metrics are named
  by extractor and count, finite, and the protocol says these are not the
  official weights and not the standard reference."""
  from configs import vae_mnist  # pylint: disable=g-import-not-at-top
  from jaxgen import evaluate, sharding, train  # pylint: disable=g-import-not-at-top
  from jaxgen.evaluate import features  # pylint: disable=g-import-not-at-top
  # An empty cache: no MNIST classifier, whatever other tests exported.
  monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "empty_cache"))
  weights = tmp_path / "generated_inception.npz"
  np.savez(weights, **state)
  config = vae_mnist.get_config("smoke")
  config.train.num_steps = 2
  config.train.progress_bar = False
  config.train.eval_at_end = False
  # Equal counts: one compiled Inception batch shape serves both passes.
  config.eval.num_samples = 10
  config.eval.inception_weights = str(weights)
  config.eval.inception_reference_size = 10
  run = train.train(config, tmp_path / "run", mesh=sharding.make_mesh(1),
                    dataset=mnist)
  result = evaluate.run(run.setup, run.state)
  quality = result["sample_metrics"]
  assert np.isfinite(quality["fid_inception_10"]) and quality["fid_inception_10"] > 0
  assert np.isfinite(quality["kid_inception_10"]["mean"])
  assert quality["is_inception_10"]["mean"] >= 1.0
  # No trained MNIST classifier in that cache: listed as skipped.
  assert "mnistnet" in quality["skipped"]
  about = result["sample_protocol"]["inception"]
  assert "NOT the official weights" in about["extractor_kind"]
  assert "first 10 images" in about["reference"]
  assert about["extractor_weights_sha256"] == inc.weights_sha256(weights)


def test_missing_inception_weights_are_skipped_with_a_remedy(tmp_path):
  from jaxgen.evaluate import features  # pylint: disable=g-import-not-at-top
  with pytest.raises(features.ExtractorMissingError, match="download"):
    features.load_inception_extractor("")
  with pytest.raises(features.ExtractorMissingError, match="no such file"):
    features.load_inception_extractor(str(tmp_path / "absent.pth"))
