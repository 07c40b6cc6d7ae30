"""jaxgen entry point: train or evaluate one config.

    python run.py --config=configs/vae_mnist.py [--workdir=runs/vae_mnist]
    python run.py --config=configs/vae_mnist.py:smoke --config.train.num_steps=50
    python run.py --config=configs/vae_mnist.py --mode=eval

Rerunning a training command on the same workdir resumes from its latest
checkpoint. Exit codes: 0 done, 1 a run error (message printed), 2 a bad
command line or config, 128+N stopped by signal N after saving a checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

# TensorFlow (used by TFDS only to prepare data) is chatty at import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top

# Before any jax import: XLA reads XLA_FLAGS when its first backend starts.
xla_cpu.use_fast_cpu_convolutions()

from absl import app, flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':smoke'.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (default: runs/<config name>[_smoke]).")
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "eval", "sample", "score", "report"],
                          "train (resumes if the workdir has checkpoints), "
                          "eval (test-set metrics of the latest checkpoint), "
                          "sample (--num samples of it to samples_<num>.npz), "
                          "score (sample metrics of --samples=FILE.npz), "
                          "report (compare --workdirs in one page).")
_NUM = flags.DEFINE_integer("num", 64, "--mode=sample: how many samples.")
_SAMPLES = flags.DEFINE_string(
    "samples", None, "--mode=score: an .npz with 'images' (uint8 NHWC), e.g. "
    "another codebase's samples, scored as jaxgen scores its own.")
_WORKDIRS = flags.DEFINE_list("workdirs", [], "--mode=report: run folders to compare.")
_REPORT_DIR = flags.DEFINE_string("report_dir", "runs/report",
                                  "--mode=report: where report.md goes.")


def _fail(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _config_arg(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config errors reported as one clear line.

  ml_collections reports a misspelt override key as an exception from deep in
  config_dict; we re-check the overrides against the config and name the key.
  """
  from jaxgen import configlib  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # wrong type, unknown flag: absl names the flag
    _fail(f"{e}\nSee --helpfull for flags.", 2)
  except Exception as e:  # pylint: disable=broad-except
    config_arg = _config_arg(argv)
    if config_arg is None:
      raise
    path, _, arg = config_arg.partition(":")
    try:
      spec = importlib.util.spec_from_file_location("_jaxgen_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      base = module.get_config(*([arg] if arg else []))
      overrides = [a for a in argv if a.startswith("--config.")]
      configlib.check_overrides(base, overrides)
    except configlib.ConfigError as config_error:
      _fail(str(config_error), 2)
    except Exception:  # pylint: disable=broad-except
      pass
    _fail(f"could not load --config={config_arg}: {type(e).__name__}: {e}", 2)
  return []


def default_workdir(config_arg: str) -> Path:
  path, _, arg = config_arg.partition(":")
  name = Path(path).stem + (f"_{arg.replace(',', '_')}" if arg else "")
  return Path("runs") / name


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}: flags look like --name=value.", 2)
  if _MODE.value == "report":
    from jaxgen import report  # pylint: disable=g-import-not-at-top
    if len(_WORKDIRS.value) < 1:
      _fail("--mode=report needs --workdirs=runs/a,runs/b", 2)
    try:
      path = report.write_report([Path(w) for w in _WORKDIRS.value],
                                 Path(_REPORT_DIR.value))
    except report.ReportError as e:
      _fail(str(e), 1)
    print(f"report -> {path}")
    return 0
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=configs/vae_mnist.py", 2)
  logging.getLogger().setLevel(logging.INFO)
  _quiet_orbax()

  from jaxgen import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed()

  from jaxgen import configlib, train, data  # pylint: disable=g-import-not-at-top
  from jaxgen import evaluate  # pylint: disable=g-import-not-at-top
  from jaxgen.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  workdir = Path(_WORKDIR.value or default_workdir(_config_arg(sys.argv)))
  try:
    if _MODE.value == "sample":
      if _NUM.value <= 0:
        _fail(f"--num={_NUM.value}: must be > 0", 2)
      path = evaluate.write_samples(train.setup(config, workdir), _NUM.value)
      print(f"{_NUM.value} samples -> {path}")
      return 0
    if _MODE.value == "score":
      if not _SAMPLES.value:
        _fail("--mode=score needs --samples=FILE.npz", 2)
      result = evaluate.score_file(train.setup(config, workdir), Path(_SAMPLES.value))
      print(_quality_line(result["sample_metrics"])[2:] + f"  -> {result.get('path')}")
      return 0
    if _MODE.value == "eval":
      result = evaluate.run(train.setup(config, workdir))
      print(_eval_line(result, workdir))
      return 0
    run = train.train(config, workdir)
    if run.interrupted_by is not None:
      print(f"stopped at step {run.step} by signal {run.interrupted_by}; "
            f"checkpoint saved. Rerun the same command to resume.")
      return 128 + run.interrupted_by
    s = run.summary
    print(f"trained to step {run.step} in {s['wall_seconds']:.1f}s "
          f"({s['steps_per_second'] or 0:.1f} steps/s); outputs in {workdir}")
    result = None
    if config.train.eval_at_end:
      result = evaluate.run(_without_iwae(run.setup, train), run.state)
      print(_eval_line(result, workdir))
    if run.setup.family.export is not None:
      run.setup.family.export(run.state, result)
    return 0
  except (configlib.ConfigError, sharding.ShardingError) as e:
    _fail(str(e), 2)
  except (data.DataError, CheckpointError, train.NonFiniteError,
          evaluate.SamplesError) as e:
    _fail(str(e), 1)
  return 0


class _DropBelowWarning(logging.Filter):
  def __init__(self, path_part: str):
    super().__init__()
    self._path_part = path_part

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or self._path_part not in record.pathname


def _quiet_orbax() -> None:
  # Orbax logs every save at INFO through absl's single logger; keep its
  # warnings and errors, drop its chatter, keep ours.
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_DropBelowWarning("/orbax/"))


def _without_iwae(setup, train):
  """The end-of-training eval skips the costly IWAE bound; --mode=eval has it."""
  if not setup.config.eval.get("iwae_samples"):
    return setup
  config = setup.config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.iwae_samples = 0
  return train.setup(config, setup.workdir, setup.mesh, setup.dataset)


def _eval_line(result: dict, workdir: Path) -> str:
  parts = ", ".join(f"{k} {v['mean']:.4g} ± {v['stderr']:.2g}"
                    for k, v in result["metrics"].items())
  parts += _quality_line(result.get("sample_metrics", {}))
  return (f"test ({result['num_examples']:,} images, step {result['step']}): "
          f"{parts}  -> {workdir / 'eval.json'}")


def _quality_line(quality: dict) -> str:
  # Whatever was computed; an extractor listed under "skipped" (a dict, as is
  # "coverage") does not hide the others.
  parts = "".join(f", {k} {v:.4g}" for k, v in quality.items()
                  if isinstance(v, float))
  if "coverage" in quality:
    parts += f", classes covered {quality['coverage']['classes_covered']}"
  return parts


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
