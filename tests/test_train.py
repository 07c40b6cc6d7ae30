"""The generic loop with the VAE: determinism, devices, resume, NaN guard, eval."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from configs import vae_mnist
from jaxgen import data, sharding, train
from jaxgen import evaluate
from jaxgen.checkpoint import CheckpointError
from jaxgen.metric_writer import MetricWriter, read_jsonl


def smoke_config(**train_overrides):
  config = vae_mnist.get_config("smoke")
  config.train.progress_bar = False
  config.train.eval_at_end = False
  config.eval.num_samples = 0  # sample metrics: tests/test_evaluation.py
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def fixed_batch(mnist, mesh, size=32):
  return sharding.put_batch({"image": mnist.train.images[:size],
                             "label": mnist.train.labels[:size]}, mesh)


def compiled_step(s):
  replicated = sharding.replicated(s.mesh)
  return jax.jit(s.family.train_step,
                 in_shardings=(replicated, sharding.batch_sharding(s.mesh), replicated),
                 out_shardings=(replicated, replicated))


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_step_is_bitwise_deterministic_and_learns(mnist, tmp_path):
  s = train.setup(smoke_config(), tmp_path, sharding.make_mesh(1), mnist)
  batch = fixed_batch(mnist, s.mesh)
  step = compiled_step(s)
  key = jax.random.fold_in(s.keys["train"], 0)
  state = train.init_state(s, batch)
  first, metrics_a = step(state, batch, key)
  second, metrics_b = step(state, batch, key)
  assert_trees_equal(first, second)
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  assert int(first.step) == 1

  losses = []
  for i in range(15):
    state, metrics = step(state, batch, jax.random.fold_in(s.keys["train"], i))
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def _losses_and_params_on(n, mnist, tmp_path, optimizer, num_steps):
  config = smoke_config()
  config.optimizer.name = optimizer
  config.optimizer.learning_rate = 0.01 if optimizer == "sgd" else 2e-3
  s = train.setup(config, tmp_path / f"{optimizer}{n}", sharding.make_mesh(n), mnist)
  batch = fixed_batch(mnist, s.mesh, size=64)
  step = compiled_step(s)
  state = train.init_state(s, batch)
  history = []
  for i in range(num_steps):
    state, metrics = step(state, batch, jax.random.fold_in(s.keys["train"], i))
    history.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return history, jax.device_get(state.params)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_one_device_and_eight_devices_agree(mnist, tmp_path, num_devices, optimizer):
  """Same global batch and keys on 1 and on 8 devices agree to 1e-5.

  Losses and gradient norms are compared under both optimizers. Parameters are
  compared under SGD (momentum 0.9), whose update is linear in the gradient:
  Adam divides by sqrt(v), so for a gradient element of ~1e-9 (near Adam's
  eps) it turns rounding-level differences in the all-reduced gradient into
  ~lr/100 differences of that parameter, which says nothing about the data
  parallelism under test.
  """
  history_1, params_1 = _losses_and_params_on(1, mnist, tmp_path, optimizer, 5)
  history_8, params_8 = _losses_and_params_on(num_devices, mnist, tmp_path,
                                              optimizer, 5)
  np.testing.assert_allclose(history_1, history_8, rtol=1e-5)
  if optimizer == "sgd":
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_interrupted_and_resumed_equals_uninterrupted(mnist, tmp_path):
  mesh = sharding.make_mesh(1)
  straight = train.train(smoke_config(), tmp_path / "straight", mesh=mesh,
                         dataset=mnist)
  assert straight.step == 20 and straight.interrupted_by is None

  def sigterm_at_7(step, state):
    del state
    if step == 7:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = tmp_path / "interrupted"
  first = train.train(smoke_config(), workdir, mesh=mesh, dataset=mnist,
                      after_step=sigterm_at_7)
  assert first.interrupted_by == signal.SIGTERM
  assert first.step == 7
  assert 7 in [int(p.name) for p in (workdir / "checkpoints").iterdir()
               if p.name.isdigit()]
  # Stopping does not spend time on a snapshot (samples) at the stop step.
  assert not list((workdir / "samples").glob("*_000007.png"))
  resumed = train.train(smoke_config(), workdir, mesh=mesh, dataset=mnist)
  assert resumed.step == 20
  assert_trees_equal(straight.state.params, resumed.state.params)
  assert_trees_equal(straight.state.opt_state, resumed.state.opt_state)

  summary = json.loads((workdir / "summary.json").read_text())
  assert [x["start_step"] for x in summary["sessions"]] == [0, 7]
  assert summary["sessions"][0]["status"] == "interrupted by SIGTERM"
  logged = [r["step"] for r in map(json.loads,
                                   (workdir / "metrics.jsonl").read_text().splitlines())]
  assert logged == sorted(set(logged)), "a resumed run must not log a step twice"


def test_steps_per_dispatch_takes_the_same_steps(mnist, tmp_path):
  """4 steps per dispatch: the smoke run's 20 steps go as 1-4, 5-8, then
  single steps 9 and 10 (a checkpoint and snapshot at 10), 11-14, 15-18, 19,
  20. Same batches and keys as one step per dispatch, so the same run: every
  logged metric and the final parameters agree bit for bit (on CPU)."""
  mesh = sharding.make_mesh(1)
  dispatched = []
  single = train.train(smoke_config(), tmp_path / "k1", mesh=mesh, dataset=mnist)
  multi = train.train(smoke_config(steps_per_dispatch=4), tmp_path / "k4",
                      mesh=mesh, dataset=mnist,
                      after_step=lambda step, state: dispatched.append(step))
  assert dispatched == [4, 8, 9, 10, 14, 18, 19, 20]
  assert multi.step == single.step == 20
  rows = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("k1", "k4")]
  losses = [[(r["step"], r["loss"]) for r in rs if "loss" in r] for rs in rows]
  assert [step for step, _ in losses[0]] == [5, 10, 15, 20]
  np.testing.assert_array_equal(losses[0], losses[1])
  for a, b in zip(jax.tree.leaves(single.state.params),
                  jax.tree.leaves(multi.state.params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert sorted(int(p.name) for p in (tmp_path / "k4" / "checkpoints").iterdir()
                if p.name.isdigit()) == [10, 20]


@pytest.mark.parametrize("step, expected", [
    (0, 4),     # steps 1-4
    (6, 1),     # 7-10 would pass the checkpoint at 8
    (8, 4),     # 9-12: the boundary at 8 is behind, 12 is its last step
    (97, 1),    # 98-101 would pass the end of the epoch (100 steps)
    (100, 4),
    (197, 1),   # past num_steps = 200
    (196, 4),
])
def test_dispatch_size_stops_at_boundaries(step, expected):
  config = smoke_config(steps_per_dispatch=4, num_steps=200, checkpoint_every=8,
                        snapshot_every=12)
  assert train.dispatch_size(step, config.train, steps_per_epoch=100) == expected


def test_rerun_with_more_steps_continues_a_finished_run(mnist, tmp_path):
  """README's route for training a finished run further: the same workdir, a
  larger train.num_steps. It resumes at the last step, and config.json records
  the new length while the old config is kept beside it."""
  mesh = sharding.make_mesh(1)
  first = train.train(smoke_config(num_steps=10), tmp_path, mesh=mesh, dataset=mnist)
  assert first.step == 10
  longer = train.train(smoke_config(num_steps=16), tmp_path, mesh=mesh, dataset=mnist)
  assert longer.step == 16
  assert not np.array_equal(*(np.asarray(jax.tree.leaves(r.state.params)[0])
                              for r in (first, longer))), "no further steps were taken"

  assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 16
  kept = json.loads((tmp_path / "config.before_step10.json").read_text())
  assert kept["train"]["num_steps"] == 10
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert [(x["start_step"], x["end_step"]) for x in summary["sessions"]] == [(0, 10), (10, 16)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(mnist, tmp_path):
  mesh = sharding.make_mesh(1)
  train.train(smoke_config(num_steps=10), tmp_path, mesh=mesh, dataset=mnist)
  exploding = smoke_config(num_steps=20)
  exploding.optimizer.learning_rate = float("inf")
  with pytest.raises(train.NonFiniteError) as info:
    train.train(exploding, tmp_path, mesh=mesh, dataset=mnist)
  message = str(info.value)
  assert "step 10" in message and "learning_rate" in message
  checkpoints = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                       if p.name.isdigit())
  assert checkpoints == [10]
  # The kept checkpoint is finite and resumable with a sane learning rate.
  again = train.train(smoke_config(num_steps=12), tmp_path, mesh=mesh, dataset=mnist)
  assert again.step == 12
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(again.state.params))


def _corrupt(step_dir):
  for path in (step_dir / "default" / "d").iterdir():
    path.write_bytes(b"\x00garbage" * 16)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(mnist, tmp_path, caplog):
  mesh = sharding.make_mesh(1)
  ckpt_dir = tmp_path / "checkpoints"
  done = train.train(smoke_config(), tmp_path, mesh=mesh, dataset=mnist)
  assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [10, 20]
  _corrupt(ckpt_dir / "20")
  with caplog.at_level("WARNING"):
    resumed = train.train(smoke_config(), tmp_path, mesh=mesh, dataset=mnist)
  assert any("step 20 is unreadable" in r.getMessage() for r in caplog.records)
  assert (tmp_path / "checkpoints_corrupt" / "20").exists()  # moved, not deleted
  assert resumed.step == 20
  assert_trees_equal(done.state.params, resumed.state.params)  # replayed 10 -> 20

  for step_dir in ckpt_dir.iterdir():
    _corrupt(step_dir)
  with pytest.raises(CheckpointError, match="Refusing to start from scratch"):
    train.train(smoke_config(), tmp_path, mesh=mesh, dataset=mnist)


def test_checkpoint_of_another_layout_is_named_not_moved(mnist, tmp_path):
  # A changed model setting is no corruption: the run stops with what differs
  # and how to resume, and the checkpoints stay where they are.
  mesh = sharding.make_mesh(1)
  train.train(smoke_config(num_steps=10), tmp_path, mesh=mesh, dataset=mnist)
  wider = smoke_config(num_steps=10)
  wider.model.latent_dim += 1
  with pytest.raises(CheckpointError, match=r"different state layout.*of another "
                     r"shape.*config\.json.*Nothing was moved"):
    train.train(wider, tmp_path, mesh=mesh, dataset=mnist)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
  assert not (tmp_path / "checkpoints_corrupt").exists()


def test_eval_means_are_exact_whatever_the_batching(mnist, tmp_path, num_devices):
  config = smoke_config(num_steps=5)
  run = train.train(config, tmp_path, mesh=sharding.make_mesh(1), dataset=mnist)
  by_layout = {}
  for n, eval_batch in ((1, 1000), (num_devices, 1000), (num_devices, 1536)):
    config.eval.batch_size = eval_batch  # 1536 leaves a padded last batch
    s = train.setup(config, tmp_path, sharding.make_mesh(n), mnist)
    state = jax.device_put(run.state, sharding.replicated(s.mesh))
    result = evaluate.run(s, state)
    by_layout[(n, eval_batch)] = result["metrics"]
    assert result["num_examples"] == 10_000
  reference = by_layout[(1, 1000)]
  for metrics in by_layout.values():
    for name in ("neg_elbo_nats", "recon_nats", "kl_nats"):
      np.testing.assert_allclose(metrics[name]["mean"], reference[name]["mean"],
                                 rtol=1e-5)
  written = json.loads((tmp_path / "eval.json").read_text())
  assert "dynamically binarized" in written["protocol"]["data"]
  m = written["metrics"]
  assert m["neg_elbo_nats"]["mean"] == pytest.approx(
      m["recon_nats"]["mean"] + m["kl_nats"]["mean"], rel=1e-6)


def test_binarized_test_set_matches_protocol(mnist, tmp_path):
  s = train.setup(smoke_config(), tmp_path, sharding.make_mesh(1), mnist)
  split = evaluate.eval_split(s)
  np.testing.assert_array_equal(split.images,
                                data.binarize_once(mnist.test.images, seed=0))


def test_metric_writer_keeps_one_line_per_step_across_writes_and_resumes(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write_scalars(5, {"loss": 1.0})
  writer.write_scalars(10, {"loss": 0.5})
  writer.write_scalars(10, {"monitor_fd": 3.0})  # a second source, same step
  writer.close()
  assert read_jsonl(tmp_path / "metrics.jsonl") == [
      {"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5, "monitor_fd": 3.0}]

  resumed = MetricWriter(tmp_path, resume_step=5)  # steps after 5 are redone
  resumed.write_scalars(10, {"loss": 0.25})
  resumed.close()
  assert read_jsonl(tmp_path / "metrics.jsonl") == [
      {"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.25}]
