"""The one generic training loop. Families plug in through jaxgen.models.Family.

    state = init(init_key, batch)
    for step s: state, metrics = train_step(state, batch(s), fold_in(train_key, s))

`train_step` is jit-compiled once with the state replicated, the batch split on
the 'data' mesh axis and the state donated. Metrics are fetched one step late so
the host never stalls the device. Everything random is a function of
(config.seed, step), so a resumed run reproduces the uninterrupted one. With
`train.steps_per_dispatch` = k > 1, k steps run as one program (`run_steps`)
wherever no checkpoint, snapshot or epoch boundary falls inside them: the same
batches and keys, one dispatch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxgen import configlib, data, sharding, viz
from jaxgen.checkpoint import Checkpointer
from jaxgen.metric_writer import MetricWriter, read_jsonl
from jaxgen.models import Family, count_params, make_family


class NonFiniteError(RuntimeError):
  """The loss or the parameters became NaN or Inf; the run was stopped."""


@dataclasses.dataclass
class Setup:
  """What training and evaluation both need, built once from a config."""
  config: ConfigDict
  workdir: Path
  mesh: Mesh
  dataset: data.Dataset
  family: Family
  keys: dict[str, jax.Array]
  data_load_seconds: float


@dataclasses.dataclass
class RunResult:
  setup: Setup
  state: Any
  step: int
  interrupted_by: int | None  # signal number, or None when training completed
  summary: dict[str, Any]


def root_keys(seed: int) -> dict[str, jax.Array]:
  """Independent streams, each a pure function of the seed."""
  init, data_key, train = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"init": init, "data": data_key, "train": train}


def setup(config: ConfigDict, workdir: str | Path, mesh: Mesh | None = None,
          dataset: data.Dataset | None = None) -> Setup:
  configlib.validate_base(config)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  sharding.check_divisible(config.train.batch_size, mesh, "train.batch_size")
  sharding.check_divisible(config.eval.batch_size, mesh, "eval.batch_size")
  seconds = 0.0
  if dataset is None:
    dataset, seconds = data.timed_load(config.data)
  family = make_family(config, dataset.spec)
  return Setup(config, Path(workdir), mesh, dataset, family,
               root_keys(config.seed), seconds)


def init_state(s: Setup, example_batch: dict[str, jax.Array]) -> Any:
  init = jax.jit(s.family.init, out_shardings=sharding.replicated(s.mesh))
  return init(s.keys["init"], example_batch)


def abstract_like(state: Any) -> Any:
  """Shapes, dtypes and shardings of a state: the template Orbax restores into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def make_checkpointer(s: Setup) -> Checkpointer:
  t = s.config.train
  return Checkpointer(s.workdir / "checkpoints", max_to_keep=t.keep_checkpoints,
                      async_save=t.async_checkpoints)


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _StopFlag:
  """SIGTERM / Ctrl-C set a flag; the loop checkpoints and exits cleanly."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    self.signum = signum
    logging.warning("received %s: saving a checkpoint, then stopping "
                    "(Ctrl-C again to stop without saving)",
                    signal.Signals(signum).name)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class _Snapshots:
  """Sample grids from a fixed noise seed, plus the family's extra views."""

  def __init__(self, s: Setup, writer: MetricWriter):
    self._dir = s.workdir / "samples"
    self._writer = writer
    self._primary = jax.process_index() == 0
    n = s.config.viz.num_samples
    viz_key = jax.random.PRNGKey(s.config.viz.seed)
    replicated = sharding.replicated(s.mesh)
    self._sample = None
    if s.family.sample is not None:
      self._sample = jax.jit(lambda state: s.family.sample(state, viz_key, n),
                             out_shardings=replicated)
    self._views = None
    self._animated = s.family.animated_views
    if s.family.views is not None:
      test = s.dataset.test
      count = min(n // 2, len(test))  # views pair each input with an output
      self._view_batch = sharding.put_replicated(
          {"image": test.images[:count], "label": test.labels[:count]}, s.mesh)
      self._views = jax.jit(
          lambda state, batch: s.family.views(state, batch, viz_key),
          out_shardings=replicated)

  def __call__(self, state: Any, step: int) -> None:
    grids, animations = {}, {}
    if self._sample is not None:
      grids["samples"] = viz.grid(np.asarray(self._sample(state)))
    if self._views is not None:
      for name, images in self._views(state, self._view_batch).items():
        images = np.asarray(images)
        cols = images.shape[1] if images.ndim == 5 else 8
        grids[name] = viz.grid(images.reshape(-1, *images.shape[-3:]), num_cols=cols)
        if name in self._animated:
          # Frame j: column j of every row, as one column of images.
          animations[name] = [viz.grid(images[:, j], num_cols=1)
                              for j in range(images.shape[1])]
    if not self._primary:
      return
    self._dir.mkdir(parents=True, exist_ok=True)
    for name, image in grids.items():
      prefix = "" if name == "samples" else f"{name}_"
      viz.save_png(image, self._dir / f"{prefix}step_{step:06d}.png", scale=2)
      self._writer.write_image(step, name, image)
    for name, frames in animations.items():
      viz.write_gif_arrays(frames, self._dir / f"{name}_step_{step:06d}.gif",
                           scale=2)

  def frames(self) -> list[Path]:
    return sorted(self._dir.glob("step_*.png"))


class _CollapseMonitor:
  """Class coverage, recall and Frechet distance of a fixed batch of samples in
  the dataset classifier's features, logged at every snapshot: mode collapse
  shows as falling coverage and recall while the losses look fine. Off when
  the family does not sample or no classifier is cached (said once)."""

  def __init__(self, s: Setup):
    self._enabled = False
    num = s.config.train.monitor_samples
    if not num or s.family.sample is None:
      return
    from jaxgen.evaluate import features  # pylint: disable=g-import-not-at-top
    try:
      self._extractor = features.load_extractor(s.dataset.spec.name)
    except features.ExtractorMissingError as e:
      logging.info("mode-collapse monitor off: %s", str(e).split("\n")[0])
      return
    self._reference = features.reference_statistics(
        self._extractor, s.dataset.train, "train", s.dataset.spec.name)
    key = jax.random.PRNGKey(s.config.viz.seed + 1)
    self._sample = jax.jit(lambda state: s.family.sample(state, key, num),
                           out_shardings=sharding.replicated(s.mesh))
    self._num_classes = s.dataset.spec.num_classes
    self._enabled = True

  def __call__(self, state: Any) -> dict[str, float]:
    if not self._enabled:
      return {}
    # pylint: disable-next=g-import-not-at-top
    from jaxgen.evaluate import classifier_scores, features, finite_per_sample
    images = np.asarray(self._sample(state))
    # A flow's inverse can overflow on a few samples; score the rest (as eval
    # does) rather than stop training on a NaN Frechet distance.
    finite_N = finite_per_sample(images)
    found = {} if finite_N.all() else {"monitor_non_finite": float(np.sum(~finite_N))}
    if not finite_N.any():
      return found
    predicted, fake = features.extract(self._extractor, images[finite_N])
    scores = classifier_scores(self._reference, predicted, fake, self._num_classes)
    coverage = scores["coverage"]
    return {**found, "monitor_classes_covered": float(coverage["classes_covered"]),
            "monitor_kl_to_uniform": coverage["kl_to_uniform"],
            "monitor_recall": scores["recall"], "monitor_fd": scores["fd"]}


def _write_config(s: Setup, resume_step: int) -> None:
  """config.json; a changed config on resume keeps the old one beside it."""
  path = s.workdir / "config.json"
  new = configlib.to_dict(s.config)
  if path.exists():
    old = json.loads(path.read_text())
    changes = configlib.diff(old, new)
    if changes:
      logging.warning("config differs from the one this workdir was trained "
                      "with (kept as config.before_step%d.json): %s",
                      resume_step, "; ".join(changes))
      path.rename(s.workdir / f"config.before_step{resume_step}.json")
  path.write_text(configlib.to_json(s.config) + "\n")


def run_steps(train_step: Callable[[Any, Any, jax.Array], tuple[Any, Any]],
              state: Any, batches_K: Any, train_key: jax.Array,
              first_step: jax.Array) -> tuple[Any, Any]:
  """K train steps in one program: step first_step + i takes batch i of
  batches_K ([K, B, ...] leaves) and the key fold_in(train_key, first_step + i),
  as K single dispatches would. Returns the state and metrics stacked [K]."""
  def one_step(current, batch_and_offset):
    batch, offset = batch_and_offset
    return train_step(current, batch,
                      jax.random.fold_in(train_key, first_step + offset))
  num = jax.tree.leaves(batches_K)[0].shape[0]
  # Unrolled, not a loop: inside a loop body XLA:CPU computes a convolution's
  # filter gradient with a naive loop nest, ~100x slower than outside one
  # (jax-ml/jax#12868; README "Benchmarks").
  return jax.lax.scan(one_step, state, (batches_K, jnp.arange(num)), unroll=True)


def dispatch_size(step: int, t: ConfigDict, steps_per_epoch: int) -> int:
  """How many steps the next dispatch runs: train.steps_per_dispatch when steps
  step+1 .. step+k stay within num_steps and no checkpoint, snapshot or epoch
  boundary falls before their last one (the loop acts on those between
  dispatches, and a window of batches comes from one epoch); else 1."""
  k = t.steps_per_dispatch
  last = step + k
  if k == 1 or last > t.num_steps:
    return 1
  for every in (t.checkpoint_every, t.snapshot_every):
    if step // every != (last - 1) // every:
      return 1
  return k if step // steps_per_epoch == (last - 1) // steps_per_epoch else 1


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train(config: ConfigDict, workdir: str | Path, *, mesh: Mesh | None = None,
          dataset: data.Dataset | None = None,
          after_step: Callable[[int, Any], None] | None = None) -> RunResult:
  """Trains to config.train.num_steps, resuming from the latest checkpoint.

  Args:
    config: a resolved config (see configs/).
    workdir: where checkpoints and outputs go; rerunning on it resumes.
    mesh: devices to use (default: all, on one 'data' axis).
    dataset: already-loaded arrays (tests reuse them; default: load from config).
    after_step: called as after_step(step, state) after each dispatch (each
      step, unless train.steps_per_dispatch > 1; tests use it to inject
      signals or inspect the state).

  Returns a RunResult; interrupted_by is set when a signal stopped the run
  after saving a checkpoint. Raises NonFiniteError on a NaN/Inf loss.
  """
  s = setup(config, workdir, mesh, dataset)
  t = config.train
  primary = jax.process_index() == 0
  s.workdir.mkdir(parents=True, exist_ok=True)

  batches = data.TrainBatches(s.dataset.train, t.batch_size, s.mesh, s.keys["data"])
  state = init_state(s, batches(0))
  checkpointer = make_checkpointer(s)
  restored, restored_step = checkpointer.restore_latest(abstract_like(state))
  if restored is not None:
    state = restored
    logging.info("resumed from the checkpoint at step %d", restored_step)
  start_step = int(state.step)
  if primary:
    _write_config(s, start_step)
  writer = MetricWriter(s.workdir, resume_step=start_step)
  snapshots = _Snapshots(s, writer)
  monitor = _CollapseMonitor(s)

  def snapshot(current, at_step: int) -> None:
    snapshots(current, at_step)
    found = monitor(current)
    if found and primary:
      writer.write_scalars(at_step, found)
  num_params = count_params(state.params)
  logging.info("%s on %s: %s parameters, %d devices, data from %s (%s train, "
               "%s test images; %.1fs)",
               s.family.name, s.dataset.spec.name, f"{num_params:,}",
               s.mesh.devices.size, s.dataset.source, f"{len(s.dataset.train):,}",
               f"{len(s.dataset.test):,}", s.data_load_seconds)

  batch_sharding = sharding.batch_sharding(s.mesh)
  replicated = sharding.replicated(s.mesh)
  step_fn = jax.jit(s.family.train_step,
                    in_shardings=(replicated, batch_sharding, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=0)
  steps_fn = jax.jit(functools.partial(run_steps, s.family.train_step),
                     in_shardings=(replicated, sharding.stacked_batch_sharding(s.mesh),
                                   replicated, replicated),
                     out_shardings=(replicated, replicated), donate_argnums=0)

  step = start_step
  # The time budget counts earlier sessions on this workdir too.
  budget_seconds = (float(t.max_seconds) - _previous_wall_seconds(s.workdir)
                    if t.max_seconds else math.inf)
  interval: list[dict[str, float]] = []
  last_logged: dict[str, float] = {}
  compile_seconds = None
  loop_start = time.perf_counter()
  steady_start, steady_from = None, start_step
  status = "completed"

  def checkpoint_dir_note() -> str:
    saved = checkpointer.steps()
    return (f"the last good checkpoint is step {saved[-1]} in "
            f"{checkpointer.directory}" if saved else "no checkpoint was saved")

  def record(first_step: int, num: int, metrics) -> None:
    """Host side of a finished dispatch of `num` steps (metrics stacked [num]
    when num > 1)."""
    fetched = jax.device_get(metrics)
    for i in range(num):
      record_step(first_step + i,
                  {k: float(v[i] if num > 1 else v) for k, v in fetched.items()})

  def record_step(at_step: int, host: dict[str, float]) -> None:
    """NaN guard, interval means, logging."""
    nonlocal last_logged
    if not math.isfinite(host[s.family.loss_key]):
      checkpointer.wait()
      raise NonFiniteError(
          f"{s.family.loss_key} is {host[s.family.loss_key]} at step {at_step} "
          f"(metrics: {host}). Training stopped; {checkpoint_dir_note()}. "
          "Lower --config.optimizer.learning_rate, set "
          "--config.optimizer.grad_clip_norm, or check the input data.")
    interval.append(host)
    if at_step % t.log_every == 0 or at_step == t.num_steps:
      last_logged = _mean_metrics(interval)
      interval.clear()
      elapsed = time.perf_counter() - (steady_start or loop_start)
      rate = (at_step - steady_from) / elapsed if steady_start and elapsed else 0.0
      extra = {"epoch": at_step / batches.steps_per_epoch,
               "steps_per_second": rate}
      writer.write_scalars(at_step, {**last_logged, **extra})
      progress.set_postfix({s.family.loss_key: f"{last_logged[s.family.loss_key]:.4g}"},
                           refresh=False)

  def save_checkpoint(at_step: int, current) -> None:
    if not bool(_all_finite(current.params)):
      checkpointer.wait()
      raise NonFiniteError(
          f"parameters contain NaN or Inf at step {at_step}; not saving them. "
          f"Training stopped; {checkpoint_dir_note()}. Lower "
          "--config.optimizer.learning_rate or set --config.optimizer.grad_clip_norm.")
    checkpointer.save(at_step, current)

  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  progress = tqdm(total=t.num_steps, initial=start_step, unit="step",
                  disable=not (t.progress_bar and primary), dynamic_ncols=True,
                  smoothing=0.1)
  pending = None  # (step, device metrics) fetched one step late
  try:
    if start_step == 0 and t.num_steps > 0:
      snapshot(state, 0)
    with _StopFlag() as stop:
      def within_budget() -> bool:
        return time.perf_counter() - loop_start < budget_seconds

      while step < t.num_steps and stop.signum is None and within_budget():
        num = dispatch_size(step, t, batches.steps_per_epoch)
        if num > 1:
          state, metrics = steps_fn(state, batches.stacked(step, num),
                                    s.keys["train"], jnp.int32(step))
        else:
          state, metrics = step_fn(state, batches(step),
                                   jax.random.fold_in(s.keys["train"], step))
        first, step = step + 1, step + num
        if compile_seconds is None:
          jax.block_until_ready(metrics)
          compile_seconds = time.perf_counter() - loop_start
          steady_start, steady_from = time.perf_counter(), step
        if pending is not None:
          record(*pending)
        pending = (first, num, metrics)
        progress.update(num)
        if step % t.checkpoint_every == 0 or step % t.snapshot_every == 0:
          record(*pending)
          pending = None
          if step % t.checkpoint_every == 0:
            save_checkpoint(step, state)
          if step % t.snapshot_every == 0:
            snapshot(state, step)
        if after_step is not None:
          after_step(step, state)
      if pending is not None:
        record(*pending)
        pending = None
      if step < t.num_steps and not within_budget():
        status = f"time budget of {t.max_seconds:g}s reached"
      if stop.signum is not None:
        status = f"interrupted by {signal.Signals(stop.signum).name}"
      save_checkpoint(step, state)
      checkpointer.wait()
      # A signal is often a preemption with seconds to spare: the checkpoint
      # is on disk, and a snapshot (sampling, views: minutes for a diffusion
      # model on CPU) is left to the resumed run's next snapshot step.
      if step % t.snapshot_every and step > start_step and stop.signum is None:
        snapshot(state, step)
    interrupted_by = stop.signum
  except NonFiniteError:
    status = "stopped: non-finite values"
    raise
  finally:
    progress.close()
    train_seconds = time.perf_counter() - loop_start
    steady_seconds = time.perf_counter() - steady_start if steady_start else 0.0
    summary = _summary(s, status, step, start_step, train_seconds, steady_seconds,
                       step - steady_from, compile_seconds, last_logged, num_params)
    if primary:
      (s.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
      frames = snapshots.frames()
      viz.write_gif(frames, s.workdir / "progress.gif",
                    labels=[f"step {int(p.stem.split('_')[-1])}" for p in frames])
      viz.plot_curves(read_jsonl(writer.path), s.workdir / "curves.png",
                      title=f"{s.family.name} on {s.dataset.spec.name}",
                      groups=s.family.curve_groups)
    writer.close()
    checkpointer.close()
  return RunResult(s, state, step, interrupted_by, summary)


def _previous_wall_seconds(workdir: Path) -> float:
  path = workdir / "summary.json"
  if not path.exists():
    return 0.0
  try:
    return float(json.loads(path.read_text()).get("wall_seconds", 0.0))
  except (json.JSONDecodeError, TypeError, ValueError):
    return 0.0


def _summary(s: Setup, status: str, step: int, start_step: int,
             train_seconds: float, steady_seconds: float, steady_steps: int,
             compile_seconds: float | None, last_metrics: dict[str, float],
             num_params: int) -> dict[str, Any]:
  """summary.json: this session's timing, plus all earlier sessions on the workdir."""
  path = s.workdir / "summary.json"
  sessions = []
  if path.exists():
    try:
      sessions = json.loads(path.read_text()).get("sessions", [])
    except json.JSONDecodeError:
      logging.warning("%s is unreadable; starting a new session list", path)
  session = {
      "start_step": start_step, "end_step": step, "status": status,
      "wall_seconds": round(train_seconds, 2),
      "compile_seconds": None if compile_seconds is None else round(compile_seconds, 2),
      "steps_per_second": round(steady_steps / steady_seconds, 3)
                          if steady_seconds > 0 and steady_steps > 0 else None,
  }
  sessions.append(session)
  return {
      "family": s.family.name,
      "dataset": s.dataset.spec.name,
      "status": status,
      "step": step,
      "num_steps": s.config.train.num_steps,
      "wall_seconds": round(sum(x["wall_seconds"] for x in sessions), 2),
      "steps_per_second": session["steps_per_second"],
      "compile_seconds": session["compile_seconds"],
      "data_load_seconds": round(s.data_load_seconds, 2),
      "final_metrics": last_metrics,
      "num_params": num_params,
      "devices": {"count": int(s.mesh.devices.size),
                  "kind": jax.devices()[0].device_kind,
                  "platform": jax.devices()[0].platform,
                  "processes": jax.process_count()},
      "global_batch_size": s.config.train.batch_size,
      "sessions": sessions,
  }
