"""The comparison report over two smoke runs, and --mode=sample's output."""

import numpy as np
import pytest

from configs import vae_mnist
from jaxgen import evaluate, report, sharding, train


@pytest.fixture(scope="module")
def two_runs(mnist, tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  workdirs = []
  for name, beta in (("vae_beta1", 1.0), ("vae_beta4", 4.0)):
    config = vae_mnist.get_config("smoke")
    config.model.beta = beta
    config.train.progress_bar = False
    config.eval.num_samples = 0
    run = train.train(config, root / name, mesh=sharding.make_mesh(1), dataset=mnist)
    evaluate.run(run.setup, run.state)
    workdirs.append(root / name)
  return root, workdirs


def test_report_compares_two_runs(two_runs):
  root, workdirs = two_runs
  path = report.write_report(workdirs, root / "report")
  text = path.read_text()
  table = [l for l in text.splitlines() if l.startswith("| vae_beta")]
  assert len(table) == 2
  header = next(l for l in text.splitlines() if l.startswith("| run |"))
  assert "neg_elbo_nats" in header and "wall s" in header
  assert "active_units" in header
  assert "beta: 4.0" in text and "beta: 1.0" in text  # protocols listed per run
  assert (root / "report" / "curves.png").stat().st_size > 0
  assert (root / "report" / "samples.png").stat().st_size > 0


def test_report_rejects_a_folder_that_is_not_a_run(tmp_path):
  with pytest.raises(report.ReportError, match="summary.json"):
    report.write_report([tmp_path], tmp_path / "out")


def test_write_samples(two_runs, mnist):
  _, workdirs = two_runs
  config = vae_mnist.get_config("smoke")
  s = train.setup(config, workdirs[0], sharding.make_mesh(1), mnist)
  path = evaluate.write_samples(s, 40)
  with np.load(path) as saved:
    assert saved["images"].shape == (40, 28, 28, 1)
    assert saved["images"].dtype == np.uint8
    first = saved["images"].copy()
  with np.load(evaluate.write_samples(s, 40)) as again:
    np.testing.assert_array_equal(again["images"], first)
  assert (workdirs[0] / "samples_40.png").exists()
