"""Train-step speed: jaxgen's jitted step vs its PyTorch twin, in one process.

    pip install -r benchmarks/requirements.txt      # CPU torch 2.13
    python benchmarks/speed.py                       # every config with a twin
    python benchmarks/speed.py --configs=dcgan_mnist --repeats=7
    python benchmarks/speed.py --configs=vae_mnist --steps=3 --repeats=1 --out=/tmp/trial.md
    python benchmarks/speed.py --steps=50 --torch_compile    # on a GPU machine
    python benchmarks/speed.py --configs=ddpm_cifar10:paper --set model.compute_dtype=bfloat16
    python benchmarks/speed.py --configs=vae_mnist:smoke --set train.steps_per_dispatch=8
    python benchmarks/speed.py --configs=dcgan_cifar10 --set model.gen_norm=none   # ablation
    python benchmarks/speed.py --memory_only         # memory alone, minutes

For each config: jaxgen's compile time, then `--repeats` rounds that alternate
A/B (jaxgen `--steps` steps, then PyTorch `--steps` steps of the identical
network, loss and optimizer; then `--sample_calls` calls of each side's
sample() at `--sample_batch` images), after warm-up; the tables give medians
over the rounds, the ratio jaxgen/PyTorch in steps (images) per second (> 1:
jaxgen faster), for train steps also the lowest and highest ratio of a single
round (this spread, not the last digit, says how far a ratio can be trusted
on a shared or noisy machine), and are written to benchmarks/RESULTS.md with the machine it
ran on. Random uint8
batches of the config's batch size: the data pipeline is not timed.

Memory, in the same table (or alone, `--memory_only`, to
benchmarks/MEMORY.md): jaxgen's step as XLA planned it (the compiled step's
arguments, outputs and temporaries, less the outputs written over the donated
state), the twin's peak while it is built and takes two steps (CUDA: the
allocator's peak; CPU: the running sum of a torch.profiler trace's per-op
allocations).

A config without a twin (one given by `--configs` outside the list below)
gets jaxgen's numbers alone. `--set` overrides apply to both sides, so the
same change to the network times as an ablation of jaxgen and its twin
together; a setting a twin does not build (bfloat16 compute, say) times
jaxgen alone and prints why. jaxgen's TFLOP/s is XLA's operation count of the step over its
time. Where torch sees a GPU, the twins run on it in TF32 (as XLA runs float32
there), `--torch_compile` adds a column for them with torch.compile'd networks,
and the table goes to benchmarks/RESULTS_gpu.md. On CPU jaxgen runs with the
XLA CPU setting run.py applies (jaxgen/xla_cpu.py);
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`
times it with jaxlib's default instead.

Twins (each built from the jaxgen config; each file's `check` shows it takes
jaxgen's step: the same loss, gradients and params given the same noise):
the GANs dcgan_mnist, dcgan_cifar10, sngan_cifar10, cgan_cifar10,
acgan_cifar10 (benchmarks/torch_dcgan.py), the autoencoders ae_mnist,
vae_mnist, cvae_mnist, vae_cifar10, cvae_cifar10 and the local
autoregressive decoders vae_mnist:ar, vae_cifar10:ar (benchmarks/torch_vae.py;
their sample() draws pixel by pixel, the twin in an eager Python loop over
the pixels), the four flows glow_mnist, realnvp_mnist,
glow_cifar10, realnvp_cifar10 (benchmarks/torch_flow.py), the DDPMs
ddpm_mnist, ddpm_cifar10, ddpm_cifar10:cpu (benchmarks/torch_ddpm.py) and
the classifiers classifier_mnist, classifier_cifar10
(benchmarks/torch_classifier.py; no sampler). Both sides draw their own noise
each step (binarization, dequantization, posterior samples, GAN latents,
augmentation, dropout), as training does.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top

# As run.py does: time jaxgen in the configuration it trains in.
xla_cpu.use_fast_cpu_convolutions()

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

import torch_classifier  # pylint: disable=g-import-not-at-top
import torch_dcgan  # pylint: disable=g-import-not-at-top
import torch_ddpm  # pylint: disable=g-import-not-at-top
import torch_flow  # pylint: disable=g-import-not-at-top
import torch_vae  # pylint: disable=g-import-not-at-top
from jaxgen import data, train  # pylint: disable=g-import-not-at-top
from jaxgen.models import count_params, make_family  # pylint: disable=g-import-not-at-top


def step_flops(lowered) -> float | None:
  """XLA's count of the floating-point operations of one step, from the HLO
  before backend passes: after them, GPU convolutions are cuDNN custom calls
  that the count skips."""
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def step_buffer_bytes(compiled) -> int | None:
  """Bytes of the buffers XLA assigned to the compiled step: its arguments
  (params, optimizer state, the batch or k-batch window), the outputs not
  written over donated arguments, and its temporaries (packed by liveness).
  None where the backend gives no analysis."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def twin_peak_bytes(build_and_step: Callable[[], None], device: str) -> int:
  """Peak bytes PyTorch holds while building a twin (its networks, optimizer,
  batch) and taking two steps, from nothing: on CUDA the caching allocator's
  peak; on CPU, which counts nothing, the running sum of every op's own
  allocations minus frees in a torch.profiler trace (op granularity: a peak
  inside one op is not seen)."""
  if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    build_and_step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before
  activities = [torch.profiler.ProfilerActivity.CPU]
  with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
    build_and_step()
  events = sorted(prof.events(), key=lambda e: e.time_range.start)
  held = np.cumsum([0] + [e.self_cpu_memory_usage for e in events])
  return int(held.max())


@dataclasses.dataclass
class JaxgenStepper:
  """A runner does n calls and waits for the last."""
  run: Callable[[int], None]
  sample_run: Callable[[int], None] | None
  compile_seconds: float
  batch_size: int
  steps_per_dispatch: int
  flops_per_step: float | None
  buffer_bytes: int | None
  num_params: int


def jaxgen_stepper(name: str, overrides: list[str], sample_batch: int
                   ) -> JaxgenStepper:
  config = torch_vae.get_config(name, overrides)
  spec = data.SPECS[config.data.name]
  family = make_family(config, spec)
  b = config.train.batch_size
  batch = jax.tree.map(jax.numpy.asarray, torch_vae.random_batch(spec, b))
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
  # train.steps_per_dispatch = k > 1: the training loop's k-step program
  # (train.run_steps) on k copies of the batch; run(n) makes n / k dispatches.
  k = config.train.steps_per_dispatch
  if k == 1:
    lowered = jax.jit(family.train_step, donate_argnums=0).lower(
        state, batch, jax.random.PRNGKey(0))
  else:
    batch = jax.tree.map(lambda x: jax.numpy.stack([x] * k), batch)
    lowered = jax.jit(functools.partial(train.run_steps, family.train_step),
                      donate_argnums=0).lower(state, batch, jax.random.PRNGKey(0), 0)
  start = time.perf_counter()
  step = lowered.compile()
  compile_seconds = time.perf_counter() - start
  holder = {"state": state}

  def run(n: int) -> None:
    if n % k:
      raise ValueError(f"{n} steps is not a multiple of train.steps_per_dispatch={k}")
    metrics = None
    for i in range(n // k):
      # One step takes key i; k steps take the train key and their first index.
      key_args = ((jax.random.PRNGKey(i),) if k == 1
                  else (jax.random.PRNGKey(0), i * k))
      holder["state"], metrics = step(holder["state"], batch, *key_args)
    jax.block_until_ready(metrics)

  flops = step_flops(lowered)
  flops = flops / k if flops else flops
  stepper = JaxgenStepper(run, None, compile_seconds, b, k, flops,
                          step_buffer_bytes(step), count_params(state.params))
  if family.sample is None or sample_batch <= 0:
    return stepper
  draw = jax.jit(lambda state, key: family.sample(state, key, sample_batch))

  def sample_run(n: int) -> None:
    images = None
    for i in range(n):
      images = draw(holder["state"], jax.random.PRNGKey(i))
    jax.block_until_ready(images)

  return dataclasses.replace(stepper, sample_run=sample_run)


def torch_sync(x: torch.Tensor) -> None:
  x.reshape(-1)[0].item()


def config_twin_stepper(name: str, device: str, compile_nets: bool,
                        sample_batch: int, overrides: list[str] = ()):
  """(train-step runner, sampling runner or None) of a twin built from the
  jaxgen config with `overrides` ("model.disc_norm=none"): GANs,
  autoencoders, flows, diffusion, classifiers (no sampler). Sampling is each
  family's sample(): for a GAN the EMA generator with standing statistics
  where the config has an EMA, else G in eval mode. A setting the twin does
  not build raises ValueError naming it."""
  config = torch_vae.get_config(name, overrides)
  spec = data.SPECS[config.data.name]
  batch = torch_vae.random_batch(spec, config.train.batch_size)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(device)
  labels = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
  if config.model.family == "flow":  # actnorm initialises from a batch
    twin = torch_flow.FlowTwin(config, spec.image_shape, images, device=device,
                               compile_nets=compile_nets)
    step = lambda: twin.train_step(images)
  else:
    cls = {"gan": torch_dcgan.GANTwin, "diffusion": torch_ddpm.DiffusionTwin,
           "classifier": torch_classifier.ClassifierTwin}.get(
               config.model.family, torch_vae.AutoencoderTwin)
    twin = cls(config, spec.image_shape, spec.num_classes, device=device,
               compile_nets=compile_nets)
    step = lambda: twin.train_step(images, labels)

  def run(n: int) -> None:
    for _ in range(n):
      metrics = step()
    torch_sync(next(iter(metrics.values())))   # one step's outputs: any waits

  def sample_run(n: int) -> None:
    for _ in range(n):
      samples = twin.sample(sample_batch)
    torch_sync(samples)

  if hasattr(twin, "param_count"):
    num_params = twin.param_count()
  else:
    trained = getattr(twin, "params", None) or [*twin.gen_params, *twin.disc_params]
    num_params = sum(p.numel() for p in trained)
  return run, sample_run if getattr(twin, "variational", True) else None, num_params


# The one override the twins do not take (they run one step per call): k
# train steps per dispatch, which keeps the network.
DISPATCH_KEY = "train.steps_per_dispatch"
TWINS = {name: config_twin_stepper for name in (
             *torch_dcgan.COVERED,
             "ae_mnist", "vae_mnist", "cvae_mnist", "vae_cifar10", "cvae_cifar10",
             "vae_mnist:ar", "vae_cifar10:ar",
             "glow_mnist", "realnvp_mnist",
             "glow_cifar10", "realnvp_cifar10", "ddpm_mnist", "ddpm_cifar10",
             "ddpm_cifar10:cpu",
             "classifier_mnist", "classifier_cifar10")}


def seconds_per_step(run, steps: int) -> float:
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps


def machine(torch_device: str) -> str:
  cpu = platform.processor() or platform.machine()
  try:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    cpuinfo = []
  for line in cpuinfo:
    if line.startswith("model name"):
      cpu = line.split(":", 1)[1].strip()
      break
  # The same model name ("AMD EPYC") has come with and without AVX-512, which
  # moves both sides' times by up to 2x, so the widest vector unit is named.
  flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                if line.startswith("flags")), [])
  for flag, isa in (("avx512f", "AVX-512"), ("avx2", "AVX2")):
    if flag in flags:
      cpu = f"{cpu}, {isa}"
      break
  jax_device = jax.devices()[0]
  torch_on = (f"{torch.cuda.get_device_name()}, TF32 matmuls and convolutions"
              if torch_device == "cuda" else f"{torch.get_num_threads()} threads")
  return (f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}; "
          f"jax {jax.__version__} on {jax_device.platform} ({jax_device.device_kind}), "
          f"torch {torch.__version__} on {torch_device} ({torch_on}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


@dataclasses.dataclass
class Row:
  """One config's numbers: ms per step per arm (none with --memory_only), and
  MiB: jaxgen's step buffers and the PyTorch twin's peak."""
  name: str
  batch_size: int
  steps_per_dispatch: int
  compile_seconds: float
  flops_per_step: float | None
  ms: dict[str, float]
  mib: dict[str, float]
  # Per twin arm, each A/B round's jaxgen/twin speed: the two sides of a
  # round run back to back, so its spread is the machine's drift that a
  # single ratio of medians hides.
  round_ratios: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def twin_name(name: str) -> str:
  """The TWINS entry covering a config name: "vae_mnist:ar,smoke" ->
  "vae_mnist:ar" (smoke only shrinks the sizes, which the twins read from
  the config)."""
  module, _, arg = name.partition(":")
  options = [o for o in arg.split(",") if o and o != "smoke"]
  return module + (":" + ",".join(options) if options else "")


def measure(name: str, args: argparse.Namespace, arms: list[str],
            torch_device: str) -> tuple[Row, dict[str, float]]:
  """One config: (its train-step row, images/s of sample() per side)."""
  jaxgen = jaxgen_stepper(name, args.set, args.sample_batch)
  # Configs without a twin get jaxgen's numbers alone. The twins follow --set
  # (the same network changed on both sides: an ablation), except where a
  # twin does not build the setting (e.g. bfloat16): then jaxgen runs alone,
  # and the run says why. Sampling: jaxgen vs eager PyTorch.
  twin_stepper = TWINS.get(twin_name(name))
  twin_overrides = [item for item in args.set if not item.startswith(DISPATCH_KEY + "=")]
  described = f"{name} with {', '.join(twin_overrides)}" if twin_overrides else name
  if twin_stepper:
    twin_stepper = functools.partial(twin_stepper, overrides=twin_overrides)
  mib = {}
  if jaxgen.buffer_bytes is not None:
    mib["jaxgen"] = jaxgen.buffer_bytes / 2**20
  if twin_stepper:
    # A twin of its own, built and dropped before the timed ones exist.
    build_and_step = lambda: twin_stepper(name, torch_device, False, 0)[0](2)
    try:
      mib["PyTorch"] = twin_peak_bytes(build_and_step, torch_device) / 2**20
    except ValueError as refused:
      if not twin_overrides:
        raise
      print(f"{described}: no PyTorch twin: {refused}", flush=True)
      twin_stepper = None
  row = Row(name, jaxgen.batch_size, jaxgen.steps_per_dispatch,
            jaxgen.compile_seconds, jaxgen.flops_per_step, {}, mib)
  print(f"{name}: " + ", ".join(f"{arm} {m:.1f} MiB" for arm, m in mib.items()),
        flush=True)
  if args.memory_only:
    return row, {}
  runs, samplers = {"jaxgen": jaxgen.run}, {"jaxgen": jaxgen.sample_run}
  if twin_stepper:
    for arm in arms:
      runs[arm], twin_sample, twin_params = twin_stepper(
          name, torch_device, arm == "torch.compile", args.sample_batch)
      # A cheap guard that both sides built one network, which matters most
      # under --set: a twin that ignored an override would time another model.
      if twin_params != jaxgen.num_params:
        raise ValueError(f"{described}: the twin has {twin_params:,} trained parameters, jaxgen "
                         f"{jaxgen.num_params:,}; not the same network")
      if arm == "PyTorch" and args.sample_batch > 0:
        samplers[arm] = twin_sample
  samplers = {arm: run for arm, run in samplers.items() if run is not None}
  for run in runs.values():
    run(args.steps)  # warm-up (and compilation)
  for run in samplers.values():
    run(2)
  times = {arm: [] for arm in runs}
  sample_times = {arm: [] for arm in samplers}
  for _ in range(args.repeats):
    for arm, run in runs.items():
      times[arm].append(seconds_per_step(run, args.steps))
    for arm, run in samplers.items():
      sample_times[arm].append(seconds_per_step(run, args.sample_calls))
  row.ms = {arm: 1000 * statistics.median(t) for arm, t in times.items()}
  row.round_ratios = {arm: [twin / ours for twin, ours in zip(t, times["jaxgen"])]
                      for arm, t in times.items() if arm != "jaxgen"}
  print(f"{name}: " + ", ".join(
      f"{arm} {t:.2f} ms/step" for arm, t in row.ms.items()) + "".join(
          f"; jaxgen/{arm} per round {ratio_range(r)}"
          for arm, r in row.round_ratios.items()), flush=True)
  per_second = {arm: args.sample_batch / statistics.median(t)
                for arm, t in sample_times.items()}
  return row, per_second


MEMORY_NOTE = (
    "Memory: jaxgen's is the buffers XLA assigned to the compiled step "
    "(arguments: params, optimizer state and the batch, k batches at k steps "
    "per dispatch; outputs not written over the donated state; temporaries), "
    "the PyTorch twin's the peak it held while being built and taking two "
    "steps (on CPU summed from a torch.profiler trace's per-op allocations, "
    "on CUDA the allocator's peak). Neither counts the framework itself or "
    "XLA's compiler.")


def ratio_range(ratios: list[float]) -> str:
  return f"{min(ratios):.2f}-{max(ratios):.2f}"


def mib_cells(row: Row) -> str:
  jaxgen, twin = row.mib.get("jaxgen"), row.mib.get("PyTorch")
  cells = [f"{jaxgen:.1f}" if jaxgen is not None else "n/a",
           f"{twin:.1f}" if twin is not None else "no twin"]
  return " | ".join(cells)


def command(args: argparse.Namespace) -> str:
  return (f"python benchmarks/speed.py --configs={args.configs}"
          + ("" if args.memory_only else f" --steps={args.steps} --repeats={args.repeats}")
          + "".join(f" --set {item}" for item in args.set)
          + ("" if args.memory_only else
             f" --sample_batch={args.sample_batch} --sample_calls={args.sample_calls}")
          + (" --torch_compile" if args.torch_compile else "")
          + (" --memory_only" if args.memory_only else ""))


def render(args: argparse.Namespace, arms: list[str], torch_device: str,
           rows: list[Row], sample_rows: list[tuple[str, dict[str, float]]]
           ) -> str:
  """The markdown of RESULTS.md: the machine, the command, the tables."""
  if args.memory_only:
    lines = [
        "# Train-step memory: jaxgen vs PyTorch twin", "",
        f"Machine: {machine(torch_device)}.",
        f"Run {datetime.date.today()}: `{command(args)}`. {MEMORY_NOTE}", "",
        "| config | batch | steps per dispatch | jaxgen step buffers (MiB) "
        "| PyTorch peak (MiB) |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.batch_size} | {r.steps_per_dispatch} | "
              f"{mib_cells(r)} |" for r in rows]
    return "\n".join(lines) + "\n"
  lines = [
      "# Train-step speed: jaxgen vs PyTorch twin",
      "",
      f"Machine: {machine(torch_device)}.",
      f"Run {datetime.date.today()}: `{command(args)}`; medians of the "
      "A/B rounds after warm-up; the ratio is of those medians, and 'per "
      "round' gives the lowest and highest of each round's own ratio (the "
      "two sides timed back to back), the spread a single ratio hides. "
      "TFLOP/s: XLA's operation count of jaxgen's "
      f"step (its HLO before backend passes) over its time. {MEMORY_NOTE}",
      "",
      "| config | batch | jaxgen compile (s) | jaxgen ms/step | jaxgen img/s "
      "| jaxgen TFLOP/s | " + " | ".join(
          f"{arm} ms/step | ratio (jaxgen/{arm} speed) | per round" for arm in arms)
      + " | jaxgen MiB | PyTorch MiB |",
      "|---|---|---|---|---|---|" + "---|---|---|" * len(arms) + "---|---|",
  ]
  for r in rows:
    jms = r.ms["jaxgen"]
    tflops = f"{r.flops_per_step / jms / 1e9:.2f}" if r.flops_per_step else "n/a"
    cells = [f"{r.ms[arm]:.2f} | **{r.ms[arm] / jms:.2f}** | "
             f"{ratio_range(r.round_ratios[arm])}" if arm in r.ms
             else "no twin | | " for arm in arms]
    lines.append(f"| {r.name} | {r.batch_size} | {r.compile_seconds:.1f} | {jms:.2f} "
                 f"| {1000 * r.batch_size / jms:.0f} | {tflops} | "
                 + " | ".join(cells) + f" | {mib_cells(r)} |")
  if sample_rows:
    lines += ["", f"Sampling: images/s of `sample()` (the twins' same function: "
              f"G(z), from the EMA generator with standing batch-norm statistics "
              f"where the config has an EMA, the decoder means of z ~ N(0, I) "
              f"(with a local AR decoder, draws from p(x | z) pixel by pixel), a "
              f"flow's inverse at the "
              f"config's temperature, or DDIM with the config's steps on the EMA "
              f"weights) at {args.sample_batch} "
              f"images per call, {args.sample_calls} calls per round.", "",
              "| config | jaxgen img/s | PyTorch img/s | ratio (jaxgen/PyTorch speed) |",
              "|---|---|---|---|"]
    for name, per_second in sample_rows:
      jps, tps = per_second["jaxgen"], per_second.get("PyTorch")
      lines.append(f"| {name} | {jps:.0f} | " + (
          f"{tps:.0f} | **{jps / tps:.2f}** |" if tps else "no twin | |"))
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default=",".join(TWINS))
  parser.add_argument("--steps", type=int, default=20, help="steps per round")
  parser.add_argument("--repeats", type=int, default=5, help="A/B rounds")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. model.disc_norm=none "
                      "(repeatable); the twins follow it (an ablation on both "
                      f"sides), but for {DISPATCH_KEY}, which only jaxgen has, "
                      "and settings a twin does not build (model.compute_dtype="
                      "bfloat16), which time jaxgen alone")
  parser.add_argument("--sample_batch", type=int, default=1000,
                      help="images per sample() call (0: no sampling table)")
  parser.add_argument("--sample_calls", type=int, default=3,
                      help="sample() calls per round")
  parser.add_argument("--torch_compile", action="store_true",
                      help="also time the twins with torch.compile'd networks")
  parser.add_argument("--memory_only", action="store_true",
                      help="memory columns alone, no timing (minutes, not "
                      "an hour; written to benchmarks/MEMORY.md or MEMORY_gpu.md)")
  parser.add_argument("--out", default=None, help="default: benchmarks/"
                      "RESULTS.md, or RESULTS_gpu.md when torch sees a GPU")
  args = parser.parse_args()
  for flag in ("steps", "repeats", "sample_calls"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag}={getattr(args, flag)}: must be at least 1 "
                   "(--sample_batch=0 turns the sampling table off)")
  torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  stem = "MEMORY" if args.memory_only else "RESULTS"
  out = Path(args.out or ROOT / "benchmarks" / (
      f"{stem}_gpu.md" if torch_device == "cuda" else f"{stem}.md"))
  if torch_device == "cuda":
    # XLA computes float32 dots and convolutions in TF32 on NVIDIA GPUs by
    # default; PyTorch does so only for convolutions unless asked.
    torch.set_float32_matmul_precision("high")
  arms = ["PyTorch"] + (["torch.compile"] if args.torch_compile else [])
  names = torch_vae.config_names(args.configs)
  if not args.memory_only:
    # Checked before any config is timed, not when the run reaches it an hour in.
    uneven = {name: k for name in names
              if args.steps % (k := torch_vae.get_config(
                  name, args.set).train.steps_per_dispatch)}
    if uneven:
      parser.error(f"--steps={args.steps} is not a multiple of these configs' "
                   f"train.steps_per_dispatch: {uneven}; use a common multiple "
                   "(e.g. 16) or --set train.steps_per_dispatch=1")
  rows, sample_rows = [], []
  for name in names:
    row, per_second = measure(name, args, arms, torch_device)
    rows.append(row)
    if per_second:
      sample_rows.append((name, per_second))
    # Rewritten after every config, so a run stopped by a time limit (a lent
    # GPU's lease, say) keeps the rows it finished.
    text = render(args, arms, torch_device, rows, sample_rows)
    out.write_text(text)
  print(text)


if __name__ == "__main__":
  main()
