"""Train-step speed: jaxgen's jitted step vs its PyTorch twin, in one process.

    pip install -r benchmarks/requirements.txt      # CPU torch 2.13
    python benchmarks/speed.py                       # every config with a twin
    python benchmarks/speed.py --configs=dcgan_mnist --repeats=7
    python benchmarks/speed.py --configs=vae_mnist --steps=3 --repeats=1 --out=/tmp/trial.md

For each config: jaxgen's compile time, then `--repeats` rounds that alternate
A/B (jaxgen `--steps` steps, then PyTorch `--steps` steps of the identical
network, loss and optimizer), after warm-up; the table gives medians over the
rounds, the ratio jaxgen/PyTorch in steps per second (> 1: jaxgen faster), and
is written to benchmarks/RESULTS.md with the machine it ran on. Random uint8
batches of the config's batch size: the data pipeline is not timed.

Configs without a twin (`--configs=glow_cifar10,ddpm_mnist`) get jaxgen's
numbers alone. jaxgen runs with the XLA CPU setting run.py applies
(jaxgen/xla_cpu.py); `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`
times it with jaxlib's default instead.

Twins so far: the DCGANs (benchmarks/torch_dcgan.py) and the MNIST
autoencoders ae_mnist, vae_mnist, cvae_mnist (benchmarks/torch_vae.py, built
from the jaxgen config; `python benchmarks/torch_vae.py check` shows it takes
jaxgen's step: the same loss, gradients and params given the same noise). Both
sides draw their own noise each step (binarization, posterior samples, GAN
latents), as training does.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top

# As run.py does: time jaxgen in the configuration it trains in.
xla_cpu.use_fast_cpu_convolutions()

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

import torch_dcgan  # pylint: disable=g-import-not-at-top
import torch_vae  # pylint: disable=g-import-not-at-top
from jaxgen import data  # pylint: disable=g-import-not-at-top
from jaxgen.models import make_family  # pylint: disable=g-import-not-at-top


def jaxgen_stepper(name: str):
  config = torch_vae.get_config(name)
  spec = data.SPECS[config.data.name]
  family = make_family(config, spec)
  b = config.train.batch_size
  batch = jax.tree.map(jax.numpy.asarray, torch_vae.random_batch(spec, b))
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
  step = jax.jit(family.train_step, donate_argnums=0)
  holder = {"state": state}
  start = time.perf_counter()
  holder["state"], metrics = step(holder["state"], batch, jax.random.PRNGKey(0))
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start

  def run(n: int) -> None:
    metrics = None
    for i in range(n):
      holder["state"], metrics = step(holder["state"], batch, jax.random.PRNGKey(i))
    jax.block_until_ready(metrics)

  return run, compile_seconds, b


def torch_dcgan_stepper(name: str):
  dataset = {"dcgan_mnist": "mnist", "dcgan_cifar10": "cifar10"}[name]
  model = torch_dcgan.DCGAN(dataset)
  h, w, c = torch_dcgan.CONFIGS[dataset]["image_shape"]
  real = torch.rand(model.batch_size, c, h, w) * 2 - 1

  def run(n: int) -> None:
    for _ in range(n):
      losses = model.train_step(real)
    float(losses["disc_loss"])  # sync

  return run


def torch_vae_stepper(name: str):
  config = torch_vae.get_config(name)
  spec = data.SPECS[config.data.name]
  twin = torch_vae.AutoencoderTwin(config, spec.image_shape, spec.num_classes)
  batch = torch_vae.random_batch(spec, config.train.batch_size)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(batch["label"].astype(np.int64))

  def run(n: int) -> None:
    for _ in range(n):
      metrics = twin.train_step(images, labels)
    float(metrics["loss"])  # sync

  return run


TWINS = {"dcgan_mnist": torch_dcgan_stepper, "dcgan_cifar10": torch_dcgan_stepper,
         "ae_mnist": torch_vae_stepper, "vae_mnist": torch_vae_stepper,
         "cvae_mnist": torch_vae_stepper}


def seconds_per_step(run, steps: int) -> float:
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return (f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default=",".join(TWINS))
  parser.add_argument("--steps", type=int, default=20, help="steps per round")
  parser.add_argument("--repeats", type=int, default=5, help="A/B rounds")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
  args = parser.parse_args()
  rows = []
  for name in args.configs.split(","):
    jax_run, compile_seconds, batch_size = jaxgen_stepper(name)
    # Configs without a twin get jaxgen's numbers alone.
    torch_run = TWINS[name](name) if name in TWINS else None
    jax_run(3)  # warm-up
    if torch_run:
      torch_run(3)
    jax_times, torch_times = [], []
    for _ in range(args.repeats):
      jax_times.append(seconds_per_step(jax_run, args.steps))
      if torch_run:
        torch_times.append(seconds_per_step(torch_run, args.steps))
    jax_ms = 1000 * statistics.median(jax_times)
    torch_ms = 1000 * statistics.median(torch_times) if torch_run else None
    rows.append((name, batch_size, compile_seconds, jax_ms, torch_ms))
    versus = (f", torch {torch_ms:.1f} ms/step, ratio {torch_ms / jax_ms:.2f}"
              if torch_run else " (no twin)")
    print(f"{name}: jaxgen {jax_ms:.1f} ms/step{versus}", flush=True)
  lines = [
      "# Train-step speed: jaxgen vs PyTorch twin",
      "",
      f"Machine: {machine()}.",
      f"Run {datetime.date.today()}: `python benchmarks/speed.py --configs="
      f"{args.configs} --steps={args.steps} --repeats={args.repeats}`; medians "
      "of the A/B rounds after warm-up.",
      "",
      "| config | batch | jaxgen compile (s) | jaxgen ms/step | PyTorch ms/step "
      "| jaxgen img/s | PyTorch img/s | ratio (jaxgen/PyTorch speed) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name, b, comp, jms, tms in rows:
    torch_cells = (f"{tms:.1f} | {1000 * b / jms:.0f} | {1000 * b / tms:.0f} | "
                   f"**{tms / jms:.2f}**" if tms is not None else
                   f"no twin | {1000 * b / jms:.0f} | | ")
    lines.append(f"| {name} | {b} | {comp:.1f} | {jms:.1f} | {torch_cells} |")
  Path(args.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
