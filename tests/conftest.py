"""Shared test setup: 8 forced CPU devices, real data from ../shared/data.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives
at the top of conftest.py.
"""

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top
xla_cpu.use_fast_cpu_convolutions()  # what run.py does
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAXGEN_DATA_DIR", str(REPO.parent / "shared" / "data"))

# Tests never read or write the user's classifier cache.
import tempfile  # pylint: disable=g-import-not-at-top
os.environ["JAXGEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxgen_test_cache_")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from jaxgen import data, sharding, train  # pylint: disable=g-import-not-at-top

DATA_DIR = Path(os.environ["JAXGEN_DATA_DIR"])


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  # Each train() call builds fresh closures and so recompiles; a persistent
  # cache turns the repeats into cache hits and keeps the suite fast.
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
  if not (DATA_DIR / "mnist").exists():
    pytest.fail(f"real MNIST files are needed in {DATA_DIR}/mnist "
                "(set JAXGEN_DATA_DIR); tests do not mock data.")
  return data.load("mnist", str(DATA_DIR), source="raw")


@pytest.fixture(scope="session")
def cifar10() -> data.Dataset:
  if not (DATA_DIR / "cifar10").exists():
    pytest.fail(f"real CIFAR-10 files are needed in {DATA_DIR}/cifar10 "
                "(set JAXGEN_DATA_DIR); tests do not mock data.")
  return data.load("cifar10", str(DATA_DIR), source="raw")


@pytest.fixture
def datasets(request):
  """name -> the session's dataset a config name ends in (cifar10, else mnist)."""
  return lambda name: request.getfixturevalue(
      "cifar10" if name.endswith("cifar10") else "mnist")


@pytest.fixture(scope="session")
def num_devices() -> int:
  assert jax.device_count() == 8, (
      "tests expect 8 forced CPU devices; XLA_FLAGS was set to "
      f"{os.environ.get('XLA_FLAGS')!r} before jax was imported")
  return 8


@pytest.fixture(scope="session")
def smoke_classifier(mnist, tmp_path_factory):
  """A smoke-sized MNIST classifier, trained and exported to the test cache."""
  from configs import classifier_mnist  # pylint: disable=g-import-not-at-top
  from jaxgen import sharding, train  # pylint: disable=g-import-not-at-top
  from jaxgen import evaluate  # pylint: disable=g-import-not-at-top
  config = classifier_mnist.get_config("smoke")
  config.train.num_steps = 200
  config.train.batch_size = 64
  config.train.progress_bar = False
  run = train.train(config, tmp_path_factory.mktemp("classifier"),
                    mesh=sharding.make_mesh(1), dataset=mnist)
  result = evaluate.run(run.setup, run.state)
  run.setup.family.export(run.state, result)
  return result


def all_equations(jaxpr):
  """A jaxpr's equations and, depth first, those of the jaxprs inside them
  (custom derivative rules, platform-dependent branches, scans)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for inner in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(inner, "jaxpr", inner)   # a ClosedJaxpr's Jaxpr
        if hasattr(inner, "eqns"):
          yield from all_equations(inner)


def check_bfloat16_compute(net32, net16, variables, *args, **kwargs) -> None:
  """net16 is net32 with bfloat16 compute: on the same float32 variables its
  output is float32, close to net32's and not equal to it (bfloat16 keeps 8
  bits of mantissa), and every convolution and matmul takes bfloat16 operands."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  apply32 = jax.jit(lambda v, *a: net32.apply(v, *a, **kwargs))
  apply16 = jax.jit(lambda v, *a: net16.apply(v, *a, **kwargs))
  out32, out16 = apply32(variables, *args), apply16(variables, *args)
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 1e-4 < rel < 3e-2, rel
  products = [e for e in all_equations(jax.make_jaxpr(
      lambda v, *a: net16.apply(v, *a, **kwargs))(variables, *args).jaxpr)
              if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert products and all(v.aval.dtype == jnp.bfloat16
                          for e in products for v in e.invars)


def setup_and_batch(config, dataset, tmp_path, n=32, split="train"):
  """A one-device Setup for `config` and its first n images of a split as a
  batch (test batches carry 'index' and 'mask', as evaluation's do)."""
  config.train.progress_bar = False
  s = train.setup(config, tmp_path, sharding.make_mesh(1), dataset)
  images = dataset.split(split)
  batch = {"image": images.images[:n], "label": images.labels[:n]}
  if split == "test":
    batch.update(index=np.arange(n, dtype=np.int32), mask=np.ones(n, bool))
  return s, sharding.put_batch(batch, s.mesh)


def with_first_test_images(dataset, n: int):
  """`dataset` with its test split cut to the first n images: evaluation tests
  whose point is not the full split stay quick."""
  return dataclasses.replace(
      dataset, test=data.Split(dataset.test.images[:n], dataset.test.labels[:n]))


def set_overrides(config, overrides) -> None:
  """Sets {"model.beta": 4, ...} on a ConfigDict, as --config.model.beta=4 would."""
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value


def check_step_is_deterministic_and_learns(s, batch, num_steps: int = 12,
                                           ratio: float = 0.95):
  """The family's jitted step: the same (state, batch, key) twice gives
  bitwise the same state and loss; then, over `num_steps` steps on `batch`
  with fresh keys, the mean loss of the last 3 falls below `ratio` times that
  of the first 3. Returns the last step's metrics."""
  step = jax.jit(s.family.train_step)
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(0)
  first, metrics_a = step(state, batch, key)
  second, metrics_b = step(state, batch, key)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  losses = []
  for i in range(num_steps):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < ratio * np.mean(losses[:3]), losses
  return metrics
