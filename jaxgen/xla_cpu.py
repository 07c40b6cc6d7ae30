"""XLA's CPU settings that jaxgen's convolutions need to be fast.

jaxlib 0.10 hands every convolution on CPU to YNNPACK by default
(`--xla_cpu_experimental_ynn_fusion_type` includes `individual_convolution`).
For the forward pass that is fine, but the filter gradient of a 3x3
convolution (a convolution whose "kernel" is the whole feature map) runs
2-3x slower there than in XLA's own Eigen convolution: measured on 2 cores,
the forward and backward pass of a 3x3, 32->32 channel convolution at 14x14,
batch 128, takes 20.9 ms with the default and 8.3 ms without it (PyTorch:
10.5 ms). Every config's train step takes 8-49% less time (README
"Benchmarks" has the tables and the commands).

XLA reads XLA_FLAGS once, when the first backend starts, so this must run
before anything touches a device; the entry points (run.py, the benchmarks,
the tests' conftest) call it first thing. A value the user already gave for
the same flag wins. The flag only exists in the jaxlib versions checked here:
an unknown flag in XLA_FLAGS is a fatal error, so for other versions nothing
is added.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
FAST_CONVOLUTIONS = f"{YNN_FUSION_FLAG}=-individual_convolution"
# jaxlib versions whose XLA has the flag and where it was measured.
CHECKED_JAXLIB = ("0.10.",)


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def use_fast_cpu_convolutions(
    environ: MutableMapping[str, str] | None = None,
    jaxlib_version: str | None = None) -> bool:
  """Adds FAST_CONVOLUTIONS to XLA_FLAGS; True if it is now in effect.

  Leaves XLA_FLAGS alone when it already sets the YNN fusion flag (the user's
  choice) or when jaxlib is not a checked version.
  """
  environ = os.environ if environ is None else environ
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  flags = environ.get("XLA_FLAGS", "")
  if YNN_FUSION_FLAG in flags:
    return FAST_CONVOLUTIONS in flags.split()
  if not version.startswith(CHECKED_JAXLIB):
    return False
  environ["XLA_FLAGS"] = f"{flags} {FAST_CONVOLUTIONS}".strip()
  return True
