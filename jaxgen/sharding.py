"""Data parallelism: one mesh axis 'data', batch split on it, state replicated.

This is what `jax.pmap` does under the hood today, written with `jax.jit` and
`NamedSharding` so the same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod.
Arrays are placed with `make_array_from_callback`, which works when every
process holds the same host data (all jaxgen processes load the full dataset),
so nothing here branches on single- vs multi-host.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class ShardingError(ValueError):
  """A batch that cannot be split evenly over the devices."""


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ShardingError(f"asked for {num_devices} devices; "
                          f"{len(devices)} are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """[K, B, ...]: K batches, each split on 'data' like batch_sharding."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(global_batch: int, mesh: Mesh, name: str) -> None:
  n = mesh.devices.size
  if global_batch % n:
    lower, upper = (global_batch // n) * n, (global_batch // n + 1) * n
    suggestion = f"{lower} or {upper}" if lower else f"{upper}"
    raise ShardingError(
        f"{name}={global_batch} is not divisible by the {n} devices in use; "
        f"set --config.{name}={suggestion}.")


def put_replicated(tree, mesh: Mesh):
  """Host arrays -> global arrays with a full copy on every device."""
  return _put(tree, replicated(mesh))


def put_batch(tree, mesh: Mesh):
  """Host arrays (the full global batch) -> global arrays split on 'data'."""
  return _put(tree, batch_sharding(mesh))


def _put(tree, sharding: NamedSharding):
  # Every process holds the same host arrays and contributes the slices its
  # own devices hold.
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda idx: np.asarray(x)[idx]),
      tree)


# Variables by which a cluster announces a multi-process job. jax's own
# auto-detection (jax.distributed.initialize() with no arguments) then reads
# the coordinator address and process ids from the same environment.
_MULTIHOST_HINTS = {
    "JAX_COORDINATOR_ADDRESS": lambda v: bool(v),
    "SLURM_NTASKS": lambda v: int(v) > 1,
    "OMPI_COMM_WORLD_SIZE": lambda v: int(v) > 1,
    "TPU_WORKER_HOSTNAMES": lambda v: "," in v,
    "MEGASCALE_COORDINATOR_ADDRESS": lambda v: bool(v),
}


def multihost_environment() -> str | None:
  """Names the variable that marks this process as part of a multi-host job."""
  for name, test in _MULTIHOST_HINTS.items():
    value = os.environ.get(name)
    try:
      if value is not None and test(value):
        return name
    except ValueError:
      continue
  return None


def maybe_initialize_distributed() -> bool:
  """Calls jax.distributed.initialize() when the environment is multi-host."""
  hint = multihost_environment()
  if hint is None:
    return False
  logging.info("multi-host job (%s set): initializing jax.distributed", hint)
  # jax reads JAX_COORDINATOR_ADDRESS itself but not these two; a generic
  # cluster (no SLURM/MPI/TPU metadata) sets all three.
  kwargs = {}
  if "JAX_NUM_PROCESSES" in os.environ:
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if "JAX_PROCESS_ID" in os.environ:
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
