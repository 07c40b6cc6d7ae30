"""Compile time and step time of a Glow, unrolled vs scanned steps.

    python benchmarks/flow_compile.py                                 # K=32, width 512
    python benchmarks/flow_compile.py --steps_per_level=8 --width=128 --batch=64

For each `model.scan_steps` setting: the jitted init (lowering and compiling
included, as a run pays it), the train step's lowering and compiling, and the
median of --repeats timed steps after one warm-up step, on random 8-bit
images through glow_cifar10's family (dequantization, preprocessing, loss,
optimizer). Runs on whatever backend jax picks.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top

# As run.py does: time jaxgen in the configuration it trains in.
xla_cpu.use_fast_cpu_convolutions()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from jaxgen import data  # pylint: disable=g-import-not-at-top
from jaxgen.models import count_params, flow  # pylint: disable=g-import-not-at-top


def glow_cifar10_config(steps_per_level: int, width: int, compute_dtype: str,
                        scan_steps: bool):
  spec = importlib.util.spec_from_file_location(
      "glow_cifar10", ROOT / "configs" / "glow_cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(None)
  config.model.steps_per_level = steps_per_level
  config.model.width = width
  config.model.compute_dtype = compute_dtype
  config.model.scan_steps = scan_steps
  return config


def time_one(config, batch_size: int, repeats: int) -> dict:
  family = flow.make(config, data.spec("cifar10"))
  images = np.random.RandomState(0).randint(0, 256, (batch_size, 32, 32, 3))
  batch = {"image": jnp.asarray(images, jnp.uint8)}
  start = time.perf_counter()
  state = jax.block_until_ready(jax.jit(family.init)(jax.random.PRNGKey(0), batch))
  init_s = time.perf_counter() - start
  start = time.perf_counter()
  step = jax.jit(family.train_step).lower(state, batch, jax.random.PRNGKey(1)).compile()
  compile_s = time.perf_counter() - start
  state = jax.block_until_ready(step(state, batch, jax.random.PRNGKey(1))[0])
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, batch, jax.random.PRNGKey(2 + i))[0])
    times.append(time.perf_counter() - start)
  return {"params": count_params(state.params), "init_s": init_s,
          "compile_s": compile_s, "step_s": float(np.median(times))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps_per_level", type=int, default=32)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--compute_dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  print(f"glow_cifar10 with K={args.steps_per_level}, width {args.width}, batch "
        f"{args.batch}, {args.compute_dtype}, on {jax.devices()[0].device_kind}")
  print("| steps | params | jitted init (s) | step compile (s) | step (s) |")
  print("|---|---|---|---|---|")
  for scan_steps in (False, True):
    config = glow_cifar10_config(args.steps_per_level, args.width,
                                 args.compute_dtype, scan_steps)
    r = time_one(config, args.batch, args.repeats)
    print(f"| {'scanned' if scan_steps else 'unrolled'} | {r['params']:,} | "
          f"{r['init_s']:.1f} | {r['compile_s']:.1f} | {r['step_s']:.3f} |", flush=True)


if __name__ == "__main__":
  main()
