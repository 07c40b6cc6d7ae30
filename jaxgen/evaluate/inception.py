"""FID's InceptionV3 (pytorch-fid weights) for Frechet Inception Distance and IS.

The weights are pytorch-fid's port of TensorFlow's 2015-12-05 Inception graph,
WEIGHTS_FILE_NAME at WEIGHTS_URL (no download here: fetch it once, then pass
its path). The file is read without torch: a .pth is a pickle whose tensors
point at raw storages, either inside a zip archive (torch.save since torch 1.6)
or appended after the pickle (the legacy format older files use), and both are
parsed here with a restricted unpickler that builds numpy arrays. A .npz with
the same names is accepted too.

    apply, info = load_inception(path)
    pool3, logits = apply(images_NHWC_in_0_1)   # [N, 2048], [N, 1008]
    is_mean, is_std = inception_score(logits)

Inception Score uses all 1008 logits (index 0 is TF's "background" class), as
the original IS code (openai/improved-gan) and torch-fidelity do on this graph.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.nets.inception import INPUT_SIZE, FIDInceptionV3, preprocess

WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
               f"fid_weights/{WEIGHTS_FILE_NAME}")
# torch.hub's naming convention makes this the start of the file's sha256;
# pytorch-fid downloads with check_hash=False, so it is not enforced there.
WEIGHTS_HASH_PREFIX = "6726825d"

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}

# Flax (module, leaf) -> torch suffix; every parameter of the net is one of these.
_TORCH_LEAF = {("conv", "kernel"): "conv.weight", ("bn", "scale"): "bn.weight",
               ("bn", "bias"): "bn.bias", ("bn", "mean"): "bn.running_mean",
               ("bn", "var"): "bn.running_var", ("fc", "kernel"): "fc.weight",
               ("fc", "bias"): "fc.bias"}
_IGNORED_SUFFIX = "num_batches_tracked"  # a training counter, no weight


class InceptionWeightsError(ValueError):
  """A weights file that is missing, unreadable, or not FID's InceptionV3."""


# --- reading torch.save files without torch ---------------------------------

class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat typed buffer; `array` is filled when its bytes are read."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel = dtype, numel
    self.array: np.ndarray | None = None


class _TensorRef:
  """What _rebuild_tensor_v2 returns; materialized once all storages are read
  (in the legacy format they follow the pickle)."""

  def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...]):
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
  """Builds only dicts, tensors and storages: a weights file runs no code."""

  def __init__(self, file: BinaryIO, storage_for: Callable[[tuple], _Storage]):
    super().__init__(file)
    self._storage_for = storage_for

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a state dict")

  def persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    return self._storage_for(pid[1:])


def _materialize(ref: _TensorRef) -> np.ndarray:
  flat = ref.storage.array
  if flat is None:
    raise ValueError("a tensor's storage has no data")
  if any(n < 0 for n in ref.size) or any(s < 0 for s in ref.stride):
    raise ValueError(f"bad tensor size {ref.size} / stride {ref.stride}")
  if 0 not in ref.size:
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if ref.offset < 0 or last >= flat.size:
      raise ValueError(f"tensor {ref.size} at offset {ref.offset} overruns its "
                       f"storage of {flat.size} elements")
  view = np.lib.stride_tricks.as_strided(
      flat[ref.offset:], shape=ref.size,
      strides=tuple(s * flat.itemsize for s in ref.stride), writeable=False)
  return np.array(view)


def _to_arrays(obj: Any) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict):
    raise ValueError(f"expected a state dict, found a {type(obj).__name__}")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise ValueError(f"entry {name!r} is a {type(value).__name__}, not a tensor")
    out[str(name)] = _materialize(value)
  return out


def _load_zip_pth(archive: zipfile.ZipFile, pkl_name: str) -> dict[str, np.ndarray]:
  prefix = pkl_name[:-len("data.pkl")]
  names = set(archive.namelist())
  byteorder = "little"
  if prefix + "byteorder" in names:
    byteorder = archive.read(prefix + "byteorder").decode().strip()
  storages: dict[str, _Storage] = {}

  def storage_for(data: tuple) -> _Storage:
    storage_type, key, _, numel = data
    key = key.decode() if isinstance(key, bytes) else str(key)
    if key not in storages:
      raw = archive.read(f"{prefix}data/{key}")
      storage = _Storage(storage_type.dtype, numel)
      nbytes = numel * storage.dtype.itemsize
      if len(raw) < nbytes:
        raise ValueError(f"storage {key} has {len(raw)} bytes, expected {nbytes}")
      stored = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
      storage.array = np.frombuffer(raw[:nbytes], stored).astype(storage.dtype)
      storages[key] = storage
    return storages[key]

  with archive.open(pkl_name) as f:
    return _to_arrays(_TorchUnpickler(f, storage_for).load())


class _PlainUnpickler(pickle.Unpickler):
  def find_class(self, module: str, name: str) -> Any:
    raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _load_legacy_pth(f: BinaryIO) -> dict[str, np.ndarray]:
  """torch.save(..., _use_new_zipfile_serialization=False): magic number,
  protocol, sys_info, the pickle, its storage keys, then per storage an int64
  element count and the raw bytes, in key order."""
  head = f.read(4)
  if head.startswith(b"PK"):
    raise ValueError("a zip archive whose central directory is unreadable "
                     "(truncated download?)")
  f.seek(0)
  if _PlainUnpickler(f).load() != _LEGACY_MAGIC:
    raise ValueError("neither a zip archive nor a legacy torch file (bad magic number)")
  protocol = _PlainUnpickler(f).load()
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(f"unsupported legacy torch protocol {protocol}")
  sys_info = _PlainUnpickler(f).load()
  little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
  roots: dict[str, _Storage] = {}
  views: list[tuple[_Storage, _Storage, int]] = []

  def storage_for(data: tuple) -> _Storage:
    storage_type, root_key, _, numel, view_metadata = data
    root_key = str(root_key)
    if root_key not in roots:
      roots[root_key] = _Storage(storage_type.dtype, numel)
    if view_metadata is None:
      return roots[root_key]
    _, offset, view_size = view_metadata
    view = _Storage(storage_type.dtype, view_size)
    views.append((view, roots[root_key], offset))
    return view

  result = _TorchUnpickler(f, storage_for).load()
  for key in _PlainUnpickler(f).load():
    storage = roots[str(key)]
    header = f.read(8)
    if len(header) != 8:
      raise ValueError(f"file ends before storage {key}")
    (numel,) = struct.unpack("<q" if little else ">q", header)
    nbytes = numel * storage.dtype.itemsize
    raw = f.read(nbytes)
    if numel != storage.numel:
      raise ValueError(f"storage {key} holds {numel} elements, the pickle says "
                       f"{storage.numel}")
    if len(raw) != nbytes:
      raise ValueError(f"storage {key}: only {len(raw)} of {nbytes} bytes (truncated?)")
    stored = storage.dtype.newbyteorder("<" if little else ">")
    storage.array = np.frombuffer(raw, stored).astype(storage.dtype)
  for view, root, offset in views:
    view.array = root.array[offset:offset + view.numel]
  return _to_arrays(result)


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """name -> array from a torch.save'd state dict (zip or legacy) or an .npz."""
  path = Path(path)
  if not path.is_file():
    raise InceptionWeightsError(
        f"{path}: no such file. FID's Inception weights are {WEIGHTS_FILE_NAME}, "
        f"from {WEIGHTS_URL}")
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) == 1:
          return _load_zip_pth(archive, pickles[0])
        if names and all(n.endswith(".npy") for n in names):
          with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
        raise ValueError(f"a zip archive that is neither torch.save output nor an "
                         f".npz (entries: {names[:5]})")
    with open(path, "rb") as f:
      return _load_legacy_pth(f)
  except (ValueError, KeyError, EOFError, TypeError, AttributeError, IndexError,
          pickle.UnpicklingError, zipfile.BadZipFile, struct.error, OSError) as e:
    raise InceptionWeightsError(
        f"{path}: not a readable PyTorch state dict or .npz (corrupt or truncated?): "
        f"{e}") from e


def weights_sha256(path: str | Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


# --- torch names <-> Flax parameters ----------------------------------------

def _torch_name(path: tuple[str, ...]) -> str:
  return ".".join((*path[:-2], _TORCH_LEAF[path[-2:]]))


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:   # conv OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:   # Linear [out, in] -> Dense [in, out]
    return array.T
  return array


def to_torch_layout(array: np.ndarray) -> np.ndarray:
  """Inverse of the Flax layout: HWIO -> OIHW, Dense [in, out] -> [out, in]."""
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 2:
    return array.T
  return array


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


@functools.lru_cache(maxsize=None)
def _flax_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  spec = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), spec)
  flat = traverse_util.flatten_dict(variables["params"])
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """The torch state dict the Flax net needs: name -> torch-layout shape
  (num_batches_tracked, which carries no weight, left out)."""
  return {_torch_name(path): _torch_shape(shape) for path, shape in _flax_shapes().items()}


def _check_names_and_shapes(state_dict: dict[str, np.ndarray]) -> None:
  expected = state_dict_shapes()
  given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIX)}
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  wrong = sorted(f"{k}: {tuple(np.shape(given[k]))} != expected {expected[k]}"
                 for k in set(expected) & set(given)
                 if tuple(np.shape(given[k])) != expected[k])
  problems = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", wrong)):
    if items:
      shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
      problems.append(f"{label}: {shown}")
  if problems:
    raise InceptionWeightsError(
        "state dict is not pytorch-fid's FID InceptionV3: " + "; ".join(problems))


def params_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """pytorch-fid state dict -> Flax params of FIDInceptionV3 (float32).

  Every Flax parameter must come from the state dict and every entry of the
  state dict must be used (num_batches_tracked aside).
  """
  _check_names_and_shapes(state_dict)
  flat = {path: jnp.asarray(_from_torch_layout(
              np.asarray(state_dict[_torch_name(path)], np.float32)))
          for path in _flax_shapes()}
  return traverse_util.unflatten_dict(flat)


def state_dict_from_params(params: dict[str, Any]) -> dict[str, np.ndarray]:
  """Flax params -> torch-named, torch-layout arrays (the inverse mapping)."""
  flat = traverse_util.flatten_dict(params)
  return {_torch_name(path): to_torch_layout(np.asarray(leaf))
          for path, leaf in flat.items()}


# --- the extractor ----------------------------------------------------------

def load_inception(path: str | Path
                   ) -> tuple[Callable[[jax.Array], tuple[jax.Array, jax.Array]],
                              dict[str, Any]]:
  """(apply, info): apply(images NHWC in [0, 1], any size, 1 or 3 channels)
  -> (pool3 features [N, 2048], logits [N, 1008])."""
  path = Path(path)
  params = params_from_state_dict(load_torch_state_dict(path))
  net = FIDInceptionV3()
  # Two jits: the network compiles once per batch size, whatever the image
  # size; params are an argument so they are not baked into the executable.
  resize = jax.jit(preprocess)
  forward = jax.jit(lambda p, x: net.apply({"params": p}, x))

  def apply(images_NHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    return forward(params, resize(images_NHWC))

  sha256 = weights_sha256(path)
  info = {
      "extractor": "fid_inception_v3 (pytorch-fid port of TF inception-2015-12-05)",
      "path": str(path),
      "weights_sha256": sha256,
      # None for a file that does not claim to be the official one.
      "matches_official_hash_prefix": (sha256.startswith(WEIGHTS_HASH_PREFIX)
                                       if path.name == WEIGHTS_FILE_NAME else None),
      "num_parameters": int(sum(np.prod(s) for s in _flax_shapes().values())),
  }
  return apply, info


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray | jax.Array, splits: int = 10
                    ) -> tuple[float, float]:
  """(mean, std) over `splits` of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits).

  Splits are the contiguous chunks [i*N//splits, (i+1)*N//splits) and the std is
  numpy's (ddof 0), both as in openai/improved-gan's inception_score.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not logits.shape[0]:
    raise ValueError(f"expected logits [N, classes], got shape {logits.shape}")
  n = logits.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f"splits must be in [1, {n}] for {n} examples, got {splits}")
  log_p = _log_softmax(logits)
  scores = []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    p = np.exp(part)
    # 0 log 0 = 0: a class with p(y|x) = 0 adds nothing, even where p(y) = 0.
    with np.errstate(divide="ignore", invalid="ignore"):
      log_py = np.log(p.mean(axis=0))
      kl = np.where(p > 0, p * (part - log_py), 0.0).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
