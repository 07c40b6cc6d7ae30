"""run.py end to end, as a user runs it: outputs, eval mode, clear errors."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

DESIGN_OUTPUTS = ("config.json", "metrics.jsonl", "events", "checkpoints",
                  "samples", "progress.gif", "curves.png", "summary.json",
                  "eval.json")


def run_py(*args, env_extra=None, timeout=300):
  env = {**os.environ, "XLA_FLAGS": "", **(env_extra or {})}
  return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_smoke_run_writes_every_output_and_eval_mode_works(tmp_path):
  workdir = tmp_path / "run"
  done = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={workdir}",
                "--config.train.progress_bar=False")
  assert done.returncode == 0, done.stderr[-3000:]
  for name in DESIGN_OUTPUTS:
    assert (workdir / name).exists(), f"missing {name}"
  assert sorted(p.name for p in (workdir / "samples").glob("step_*.png")) == [
      "step_000000.png", "step_000010.png", "step_000020.png"]
  assert (workdir / "samples" / "reconstructions_step_000020.png").exists()
  assert list((workdir / "events").iterdir())
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["step"] == 20 and summary["status"] == "completed"
  assert summary["steps_per_second"] > 0 and summary["wall_seconds"] > 0
  assert "neg_elbo_nats" in summary["final_metrics"]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  # (with a cached classifier, the mode-collapse monitor adds a step-0 line)
  assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["family"] == "vae" and config["train"]["num_steps"] == 20

  (workdir / "eval.json").unlink()
  evaluated = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={workdir}",
                     "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.loads((workdir / "eval.json").read_text())
  assert result["step"] == 20 and result["num_examples"] == 10_000
  assert result["metrics"]["neg_elbo_nats"]["mean"] > 0
  assert "binarized once" in result["protocol"]["data"]
  assert "neg_elbo_nats" in evaluated.stdout

  sampled = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={workdir}",
                   "--mode=sample", "--num=12")
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert (workdir / "samples_12.npz").exists() and (workdir / "samples_12.png").exists()

  # Rerunning the finished command resumes at the end: nothing to redo.
  again = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={workdir}",
                 "--config.train.progress_bar=False")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "trained to step 20" in again.stdout


@pytest.mark.parametrize("flag, expected", [
    ("--config.train.num_stepz=5", ["num_stepz", "Did you mean 'train.num_steps'"]),
    ("--config.trian.num_steps=5", ["trian", "Did you mean 'train'"]),
    ("--config.train.num_steps=abc", ["config.train.num_steps", "abc"]),
])
def test_bad_config_flags_name_the_key(flag, expected):
  done = run_py("--config=configs/vae_mnist.py:smoke", flag, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  for text in expected:
    assert text in done.stderr
  assert "Traceback" not in done.stderr


def test_bad_config_value_is_a_clear_error(tmp_path):
  done = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}",
                "--config.data.binarize=sometimes")
  assert done.returncode == 2
  assert "--config.data.binarize='sometimes'" in done.stderr
  assert "'dynamic'" in done.stderr and "Traceback" not in done.stderr


def test_missing_data_through_run_py(tmp_path):
  start = time.perf_counter()
  done = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path / 'w'}",
                f"--config.data.dir={tmp_path / 'nothing'}",
                f"--config.data.tfds_dir={tmp_path / 'tfds'}",
                env_extra={"JAXGEN_DATA_DIR": ""})
  assert done.returncode == 1
  assert "JAXGEN_DATA_DIR" in done.stderr and "internet" in done.stderr
  assert "Traceback" not in done.stderr
  assert time.perf_counter() - start < 60  # process start included


def test_eval_without_checkpoint_says_train_first(tmp_path):
  done = run_py("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}",
                "--mode=eval")
  assert done.returncode == 1
  assert "train first" in done.stderr and "Traceback" not in done.stderr


def test_report_mode_on_a_folder_that_is_not_a_run(tmp_path):
  done = run_py("--mode=report", f"--workdirs={tmp_path}",
                f"--report_dir={tmp_path / 'out'}", timeout=120)
  assert done.returncode == 1
  assert "summary.json" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_saves_a_checkpoint_and_rerun_resumes(tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  args = ["--config=configs/vae_mnist.py:smoke", f"--workdir={workdir}",
          "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
          "--config.train.progress_bar=False", "--config.eval.num_samples=0"]
  env = {**os.environ, "XLA_FLAGS": ""}
  process = subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  metrics = workdir / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert "Rerun the same command to resume" in stdout
  saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and saved[0] > 0
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "interrupted by SIGTERM" and summary["step"] == saved[0]

  resumed = run_py(*args[:2], f"--config.train.num_steps={saved[0] + 5}",
                   "--config.train.progress_bar=False", "--config.eval.num_samples=0")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from the checkpoint at step {saved[0]}" in resumed.stderr
  assert f"trained to step {saved[0] + 5}" in resumed.stdout


def test_eval_line_shows_sample_metrics_beside_a_skipped_extractor():
  """The common case: the classifier's metrics exist, Inception was skipped."""
  import run  # pylint: disable=g-import-not-at-top
  result = {"num_examples": 10_000, "step": 6000,
            "metrics": {"neg_elbo_nats": {"mean": 92.91, "stderr": 0.25}},
            "sample_metrics": {"fd_mnistnet_10k": 102.8,
                               "coverage": {"classes_covered": 10},
                               "skipped": {"inception": "no weights"}}}
  line = run._eval_line(result, REPO / "runs" / "x")  # pylint: disable=protected-access
  assert "neg_elbo_nats 92.91" in line
  assert "fd_mnistnet_10k 102.8" in line and "classes covered 10" in line
