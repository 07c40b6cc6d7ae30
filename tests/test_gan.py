"""GAN family: every config's step, the two updates, losses, the gradient
penalty, spectral norm, the training views and the mode-collapse monitor."""

import dataclasses
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_bfloat16_compute, set_overrides
from configs import (acgan_cifar10, cgan_cifar10, dcgan_cifar10, dcgan_mnist,
                     sngan_cifar10)
from jaxgen import configlib, evaluate, sharding, train
from jaxgen.models import gan
from jaxgen.nets.gan import ConditionalNorm, Discriminator, Generator

CONFIGS = {"dcgan_mnist": dcgan_mnist, "dcgan_cifar10": dcgan_cifar10,
           "sngan_cifar10": sngan_cifar10, "cgan_cifar10": cgan_cifar10,
           "acgan_cifar10": acgan_cifar10}
VARIANTS = {
    "wgan_gp": {"model.loss": "wgan_gp", "model.disc_norm": "layer"},
    "conditional": {"model.conditional": True, "model.spectral_norm": True},
    "conditional_norm": {"model.conditional": True, "model.gen_conditioning": "norm"},
    "strided": {"model.downsample": "strided", "model.ema_decay": 0.9},
    "no_norm_hinge": {"model.gen_norm": "none", "model.disc_norm": "none",
                      "model.loss": "hinge"},
    "bfloat16": {"model.compute_dtype": "bfloat16", "model.spectral_norm": True,
                 "model.conditional": True},
    "bfloat16_wgan_gp": {"model.compute_dtype": "bfloat16", "model.loss": "wgan_gp",
                         "model.disc_norm": "layer"},
}


def smoke_config(name, overrides=None):
  config = CONFIGS[name].get_config("smoke")
  config.train.progress_bar = False
  set_overrides(config, overrides or {})
  return config


def setup_and_batch(config, dataset, tmp_path, n=32):
  s = train.setup(config, tmp_path, sharding.make_mesh(1), dataset)
  split = dataset.train
  batch = sharding.put_batch({"image": split.images[:n], "label": split.labels[:n]},
                             s.mesh)
  return s, batch


def leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("name, variant", [(n, None) for n in sorted(CONFIGS)]
                         + [("dcgan_mnist", v) for v in sorted(VARIANTS)])
def test_smoke_step_is_deterministic_and_updates_both_networks(name, variant,
                                                               datasets, tmp_path):
  config = smoke_config(name, VARIANTS.get(variant))
  s, batch = setup_and_batch(config, datasets(name), tmp_path)
  state = train.init_state(s, batch)
  step = jax.jit(s.family.train_step)
  key = jax.random.PRNGKey(0)
  first, metrics_a = step(state, batch, key)
  second, metrics_b = step(state, batch, key)
  assert leaves_equal(first, second)
  assert {k: float(v) for k, v in metrics_a.items()} == {
      k: float(v) for k, v in metrics_b.items()}
  for net in ("generator", "discriminator"):
    assert not leaves_equal(state.params[net], first.params[net]), net
  assert all(np.isfinite(float(v)) for v in metrics_a.values()), metrics_a
  assert int(first.step) == 1
  images = jax.jit(lambda st: s.family.sample(st, key, 8))(first)
  assert images.shape == (8, *s.dataset.spec.image_shape)
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_bfloat16_generator_and_discriminator_keep_float32_params_and_output(norm):
  z, label = jax.random.normal(jax.random.PRNGKey(0), (4, 16)), jnp.eye(10)[:4]
  generator = dict(image_shape=(28, 28, 1), widths=(16, 8), norm=norm)
  variables = Generator(**generator).init(jax.random.PRNGKey(1), z, label, train=False)
  check_bfloat16_compute(Generator(**generator), Generator(**generator, dtype=jnp.bfloat16),
                         variables, z, label, train=False)
  images = jax.random.uniform(jax.random.PRNGKey(2), (4, 28, 28, 1)) * 2 - 1
  labels = jnp.arange(4)
  # Without spectral norm: its power iteration multiplies the float32 weights
  # in float32, on purpose (the "bfloat16" variant above trains with it).
  disc = dict(widths=(8, 16), norm=norm, num_classes=10)
  variables = Discriminator(**disc).init(jax.random.PRNGKey(3), images, labels,
                                         train=False)
  check_bfloat16_compute(Discriminator(**disc), Discriminator(**disc, dtype=jnp.bfloat16),
                         variables, images, labels, train=False)


def test_each_update_changes_only_its_own_network(mnist, tmp_path):
  config = smoke_config("dcgan_mnist")
  s, batch = setup_and_batch(config, mnist, tmp_path)
  steps = gan.make_steps(config, s.dataset.spec)
  state = train.init_state(s, batch)
  real = gan.to_tanh_range(batch["image"])
  key = jax.random.PRNGKey(1)
  (params, stats, _), _ = jax.jit(steps.disc_update)(
      (state.params, state.stats, state.opt_state), (real, batch["label"], key))
  assert leaves_equal(params["generator"], state.params["generator"])
  assert leaves_equal(stats["generator"], state.stats["generator"])
  assert not leaves_equal(params["discriminator"], state.params["discriminator"])

  params, _, _, _ = jax.jit(steps.gen_update)(
      state.params, state.stats, state.opt_state, batch["label"], key)
  assert leaves_equal(params["discriminator"], state.params["discriminator"])
  assert not leaves_equal(params["generator"], state.params["generator"])


def test_ema_copies_until_its_start_then_averages_and_sampling_uses_it(mnist,
                                                                       tmp_path):
  # Standing statistics off: both generators read the same running statistics,
  # so only the weights differ (the next test covers standing statistics).
  config = smoke_config("dcgan_mnist", {"model.ema_decay": 0.9, "model.ema_start": 2,
                                        "model.standing_stats_batch": 0})
  s, batch = setup_and_batch(config, mnist, tmp_path)
  step = jax.jit(s.family.train_step)
  states = [train.init_state(s, batch)]
  for i in range(3):
    states.append(step(states[-1], batch, jax.random.PRNGKey(i))[0])
  # Steps 0 and 1 run before ema_start: the EMA is a copy of G.
  assert leaves_equal(states[2].ema_params, states[2].params["generator"])
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, states[2].ema_params,
                          states[3].params["generator"])
  for got, want in zip(jax.tree.leaves(states[3].ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert not leaves_equal(states[3].ema_params, states[3].params["generator"])

  key = jax.random.PRNGKey(7)
  live = states[3].replace(ema_params=states[3].params["generator"])
  sample = lambda family, st: np.asarray(family.sample(st, key, 8))
  from_ema = sample(s.family, states[3])
  assert np.array_equal(from_ema, sample(s.family, states[3]))
  assert not np.array_equal(from_ema, sample(s.family, live))
  # ema_decay=0 at sampling time reads the same checkpoint's live generator.
  config.model.ema_decay = 0.0
  live_family = train.setup(config, tmp_path, s.mesh, mnist).family
  assert np.array_equal(sample(live_family, states[3]), sample(s.family, live))
  assert "EMA generator weights (decay 0.9)" in s.family.eval_protocol["sampling"]
  assert "EMA" not in live_family.eval_protocol["sampling"]


@pytest.mark.parametrize("conditioning", ["concat", "norm"])
def test_batch_norm_at_momentum_0_stores_its_batch_statistics(conditioning):
  # Standing statistics rest on this: a training-mode call at momentum 0 leaves
  # exactly its batch's statistics, so eval mode with them redraws that batch.
  generator = Generator(image_shape=(28, 28, 1), widths=(16, 8),
                        conditioning=conditioning)
  z_BL = jax.random.normal(jax.random.PRNGKey(0), (64, 16))
  onehot = jax.nn.one_hot(jnp.arange(64) % 10, 10)
  variables = generator.init(jax.random.PRNGKey(1), z_BL, onehot, train=False)
  variables = {**variables, "batch_stats": jax.tree.map(
      lambda v: v + 3.0, variables["batch_stats"])}   # stale statistics
  x_train, _ = generator.apply(variables, z_BL, onehot, train=True,
                               mutable=["batch_stats"])
  _, standing = generator.clone(bn_momentum=0.0).apply(
      variables, z_BL, onehot, train=True, mutable=["batch_stats"])
  x_eval = generator.apply({**variables, **standing}, z_BL, onehot, train=False)
  np.testing.assert_allclose(x_eval, x_train, atol=2e-5)
  stale = generator.apply(variables, z_BL, onehot, train=False)
  assert np.abs(np.asarray(stale) - np.asarray(x_train)).max() > 1e-2


def test_ema_generator_samples_with_its_own_batch_norm_statistics(mnist, tmp_path):
  config = smoke_config("dcgan_mnist", {"model.ema_decay": 0.9})
  assert config.model.standing_stats_batch > 0   # on by default with the EMA
  s, batch = setup_and_batch(config, mnist, tmp_path)
  state = train.init_state(s, batch)
  for i in range(3):
    state, _ = jax.jit(s.family.train_step)(state, batch, jax.random.PRNGKey(i))
  # Running statistics far from any the EMA weights would produce.
  shifted = state.replace(stats={**state.stats, "generator": jax.tree.map(
      lambda v: v + 3.0, state.stats["generator"])})
  key = jax.random.PRNGKey(7)
  sample = lambda family, st: np.asarray(family.sample(st, key, 8))
  views = lambda family, st: np.asarray(family.views(st, batch, key)["interpolations"])
  assert np.array_equal(sample(s.family, state), sample(s.family, shifted))
  assert np.array_equal(views(s.family, state), views(s.family, shifted))
  assert "standing statistics" in s.family.eval_protocol["sampling"]
  # With standing statistics off, the live generator's running statistics
  # normalize the EMA weights, and shifting them changes the samples.
  config.model.standing_stats_batch = 0
  running = train.setup(config, tmp_path, s.mesh, mnist).family
  assert not np.array_equal(sample(running, state), sample(running, shifted))
  assert not np.array_equal(views(running, state), views(running, shifted))
  assert "running statistics" in running.eval_protocol["sampling"]


def test_conditional_gan_uses_the_label_in_both_networks(cifar10, tmp_path):
  # cgan_cifar10 is the DCGAN recipe plus hinge and labels: the label must
  # change what G draws from the same z and how D scores the same image.
  config = smoke_config("cgan_cifar10")
  assert (config.model.loss, config.model.conditional) == ("hinge", True)
  s, batch = setup_and_batch(config, cifar10, tmp_path, n=8)
  state, _ = jax.jit(s.family.train_step)(train.init_state(s, batch), batch,
                                          jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(2)
  labels = jnp.arange(8) % 10
  as_given = s.family.sample(state, key, 8, labels)
  assert np.array_equal(np.asarray(as_given), np.asarray(s.family.sample(state, key, 8)))
  # An untrained G's images are all near 0.5: compare the label's effect with
  # that of a new z rather than with an absolute threshold.
  label_change = jnp.abs(as_given - s.family.sample(state, key, 8, (labels + 3) % 10))
  z_change = jnp.abs(as_given - s.family.sample(state, jax.random.PRNGKey(3), 8, labels))
  assert float(jnp.max(label_change)) > 0.05 * float(jnp.max(z_change))
  relabelled = {**batch, "label": (batch["label"] + 3) % 10}
  scores = s.family.evaluate(state, batch, key)["disc_score_test"]
  scores_relabelled = s.family.evaluate(state, relabelled, key)["disc_score_test"]
  assert float(jnp.max(jnp.abs(scores - scores_relabelled))) > 1e-4


AUX = {"model.conditional": True, "model.loss": "hinge"}


def test_auxiliary_classifier_adds_its_class_cross_entropy_to_both_losses(mnist,
                                                                         tmp_path):
  # Weights 1 and 3 build the same networks; the losses must differ by exactly
  # 2 x the class cross-entropy, which must be D's class head's on real images
  # (for D) and on G's fakes with the labels they were drawn for (for G).
  runs = {}
  for weight in (1.0, 3.0):
    config = smoke_config("dcgan_mnist", {**AUX, "model.aux_classifier_weight": weight})
    s, batch = setup_and_batch(config, mnist, tmp_path / str(weight), n=16)
    steps = gan.make_steps(config, s.dataset.spec)
    state = train.init_state(s, batch)
    real = gan.to_tanh_range(batch["image"])
    key = jax.random.PRNGKey(1)
    _, d_metrics = jax.jit(steps.disc_update)(
        (state.params, state.stats, state.opt_state), (real, batch["label"], key))
    *_, g_metrics = jax.jit(steps.gen_update)(
        state.params, state.stats, state.opt_state, batch["label"], key)
    runs[weight] = (state, d_metrics, g_metrics)
  (state, d1, g1), (_, d3, g3) = runs[1.0], runs[3.0]
  np.testing.assert_allclose(float(d3["disc_loss"]) - float(d1["disc_loss"]),
                             2 * float(d1["d_class_loss_real"]), rtol=1e-4)
  np.testing.assert_allclose(float(g3["gen_loss"]) - float(g1["gen_loss"]),
                             2 * float(g1["g_class_loss_fake"]), rtol=1e-4)
  # D's class head on the real batch, by hand (batch norm in training mode).
  net = Discriminator(widths=tuple(config.model.disc_widths), num_classes=10,
                      aux_classes=10)
  (_, logits), _ = net.apply({"params": state.params["discriminator"],
                              **state.stats["discriminator"]},
                             real, batch["label"], train=True, mutable=["batch_stats"])
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  by_hand = -np.mean(log_p[np.arange(16), np.asarray(batch["label"])])
  np.testing.assert_allclose(float(d1["d_class_loss_real"]), by_hand, rtol=1e-4)
  assert 0.0 <= float(g1["d_class_acc_fake"]) <= 1.0
  test_metrics = s.family.evaluate(state, batch, key)
  assert set(test_metrics) == {"disc_score_test", "disc_class_acc_test"}
  assert np.isin(np.asarray(test_metrics["disc_class_acc_test"]), [0.0, 1.0]).all()


def disc_updates_on_one_batch(config, dataset, tmp_path, num_updates):
  """The metrics of `num_updates` D updates (learning rate 1e-3) on one real
  batch of 32 against the initial G."""
  config.optimizer.learning_rate = 1e-3
  s, batch = setup_and_batch(config, dataset, tmp_path)
  steps = gan.make_steps(config, s.dataset.spec)
  state = train.init_state(s, batch)
  real = gan.to_tanh_range(batch["image"])
  update = jax.jit(steps.disc_update)
  carry, history = (state.params, state.stats, state.opt_state), []
  for i in range(num_updates):
    carry, metrics = update(carry, (real, batch["label"], jax.random.PRNGKey(i)))
    history.append({k: float(v) for k, v in metrics.items()})
  return history


def test_auxiliary_classifier_learns_the_labels_of_real_images(mnist, tmp_path):
  config = smoke_config("dcgan_mnist", {**AUX, "model.aux_classifier_weight": 1.0})
  history = disc_updates_on_one_batch(config, mnist, tmp_path, 25)
  losses = [m["d_class_loss_real"] for m in history]
  # Chance is log(10) = 2.30; 25 steps on one batch of 32 must memorize much of it.
  assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_conditional_norm_applies_the_gain_and_bias_of_each_label(kind):
  x_BHWC = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 3, 4)) * 3.0 + 1.0
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  onehot = jax.nn.one_hot(labels, 3)
  layer = ConditionalNorm(kind, train=True)
  variables = layer.init(jax.random.PRNGKey(1), x_BHWC, onehot)
  gain = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.1, 3.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
  bias = np.array([[0.0, 1.0, -1.0, 0.5], [3.0, 0.0, 0.0, 0.0], [-2.0, 0.2, 0.0, 1.0]])
  params = {"class_gain": {"kernel": jnp.asarray(gain)},
            "class_bias": {"kernel": jnp.asarray(bias)}}
  # At init every class has gain 1 and bias 0: the plain normalization.
  x = np.asarray(x_BHWC, np.float64)
  axes = (0, 1, 2) if kind == "batch" else (-1,)
  normalized = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
  at_init, _ = layer.apply(variables, x_BHWC, onehot, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(at_init), normalized, atol=1e-5)
  out, _ = layer.apply({**variables, "params": params}, x_BHWC, onehot,
                       mutable=["batch_stats"])
  by_hand = normalized * (1.0 + gain[labels])[:, None, None] + bias[labels][:, None, None]
  np.testing.assert_allclose(np.asarray(out), by_hand, atol=1e-4)


def test_generator_with_conditional_norm_takes_the_label_only_through_its_norms():
  z, onehot = jax.random.normal(jax.random.PRNGKey(0), (4, 16)), jnp.eye(10)[:4]
  generator = Generator(image_shape=(32, 32, 3), widths=(16, 8, 8), conditioning="norm")
  params = jax.jit(lambda key: generator.init(key, z, onehot, train=False))(
      jax.random.PRNGKey(1))["params"]
  assert params["Dense_0"]["kernel"].shape[0] == 16   # z alone: no label concatenated
  norms = [name for name in params if name.startswith("ConditionalNorm")]
  assert len(norms) == 3, sorted(params)
  for name in norms:
    assert params[name]["class_gain"]["kernel"].shape[0] == 10
  with pytest.raises(ValueError, match="needs a norm layer"):
    Generator(image_shape=(32, 32, 3), widths=(16, 8, 8), norm="none",
              conditioning="norm").init(jax.random.PRNGKey(1), z, onehot, train=False)


def test_discriminator_learns_to_tell_real_from_a_fixed_generator(mnist, tmp_path):
  history = disc_updates_on_one_batch(smoke_config("dcgan_mnist"), mnist, tmp_path, 15)
  losses = [m["disc_loss"] for m in history]
  assert losses[-1] < 0.5 * losses[0], losses
  assert history[-1]["d_real"] > history[-1]["d_fake"]


def test_losses_match_their_definitions():
  real = jnp.array([2.0, -0.5, 0.3])
  fake = jnp.array([-1.5, 0.7, 1.2])
  bce = lambda logits, target: -(target * jax.nn.log_sigmoid(logits)
                                 + (1 - target) * jax.nn.log_sigmoid(-logits))
  np.testing.assert_allclose(gan.disc_loss_terms("nonsaturating", real, fake),
                             bce(real, 1.0) + bce(fake, 0.0), rtol=1e-6)
  np.testing.assert_allclose(gan.gen_loss_terms("nonsaturating", fake),
                             bce(fake, 1.0), rtol=1e-6)
  np.testing.assert_allclose(gan.disc_loss_terms("hinge", real, fake),
                             [0.0 + 0.0, 1.5 + 1.7, 0.7 + 2.2], rtol=1e-6)
  np.testing.assert_allclose(gan.disc_loss_terms("wgan_gp", real, fake),
                             fake - real, rtol=1e-6)
  np.testing.assert_allclose(gan.gen_loss_terms("hinge", fake), -fake)


def test_gradient_penalty_against_a_hand_computation():
  # critic(x) = sum(w * x^2) per image: grad = 2 w x, so the penalty at the
  # mixed point x^ = e real + (1 - e) fake is (|2 w x^| - 1)^2.
  rng = np.random.default_rng(0)
  real = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  fake = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  w = rng.uniform(0.1, 1.0, size=(2, 2, 1)).astype(np.float32)
  critic = lambda x: jnp.sum(w * x ** 2, axis=(1, 2, 3))
  key = jax.random.PRNGKey(3)
  got = gan.gradient_penalty(critic, real, fake, key)
  e = np.asarray(jax.random.uniform(key, (3, 1, 1, 1)))
  mixed = e * real + (1 - e) * fake
  norms = np.sqrt(np.sum((2 * w * mixed) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(got, (norms - 1) ** 2, rtol=1e-5)


def test_spectral_norm_estimate_matches_numpy_svd():
  net = Discriminator(widths=(4, 8), norm="none", spectral_norm=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  variables = net.init(jax.random.PRNGKey(1), x, train=False)
  apply = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"])[1])
  for _ in range(50):  # one power iteration per training call
    variables = {**variables, **apply(variables)}
  stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  sigmas = [float(v) for k, v in stats.items() if k.endswith("/sigma")]
  checked = 0
  for name, kernel in params.items():
    if name.endswith("kernel"):
      matrix = np.asarray(kernel).reshape(-1, kernel.shape[-1])
      top = np.linalg.svd(matrix, compute_uv=False)[0]
      assert any(abs(sg - top) < 1e-3 * top for sg in sigmas), (name, top, sigmas)
      checked += 1
  assert checked == 3  # two convs and the dense score


@pytest.mark.parametrize("overrides, key", [
    ({"model.loss": "wgan_gp"}, "model.disc_norm"),
    ({"model.disc_steps": 3}, "train.batch_size"),
    ({"model.loss": "wasserstein"}, "model.loss"),
    ({"model.ema_decay": 1.0}, "model.ema_decay"),
    ({"model.standing_stats_batch": -1}, "model.standing_stats_batch"),
    ({"data.binarize": "dynamic"}, "data.binarize"),
    ({"model.compute_dtype": "float16"}, "model.compute_dtype"),
    ({"model.gen_conditioning": "film"}, "model.gen_conditioning"),
    ({"model.gen_conditioning": "norm"}, "model.gen_conditioning"),
    ({"model.gen_conditioning": "norm", "model.conditional": True,
      "model.gen_norm": "none"}, "model.gen_norm"),
    ({"model.aux_classifier_weight": 1.0}, "model.aux_classifier_weight"),
    ({"model.aux_classifier_weight": -1.0, "model.conditional": True},
     "model.aux_classifier_weight"),
])
def test_bad_gan_configs_name_the_key(overrides, key, mnist):
  config = smoke_config("dcgan_mnist", overrides)
  with pytest.raises(configlib.ConfigError, match=key.replace(".", r"\.")):
    gan.make(config, mnist.spec)


def test_training_views_monitor_and_time_budget(smoke_classifier, mnist, tmp_path):
  del smoke_classifier  # cached: the mode-collapse monitor runs
  config = smoke_config("dcgan_mnist")
  config.train.num_steps = 30
  config.train.eval_at_end = False
  run = train.train(config, tmp_path, mesh=sharding.make_mesh(1), dataset=mnist)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  monitored = [r for r in records if "monitor_classes_covered" in r]
  assert [r["step"] for r in monitored] == [0, 10, 20, 30]
  assert all(0 <= r["monitor_recall"] <= 1 and r["monitor_fd"] >= 0
             for r in monitored)
  assert any("d_real" in r and "d_fake" in r for r in records)
  for name in ("progress.gif", "curves.png", "samples/step_000030.png",
               "samples/interpolations_step_000030.png"):
    assert (tmp_path / name).exists(), name
  assert run.summary["status"] == "completed"

  # A wall-clock budget stops training early, with a checkpoint, and counts
  # earlier sessions: a spent budget trains no further.
  budget = tmp_path / "budget"
  config.train.num_steps = 10_000
  config.train.max_seconds = 2.0
  run = train.train(config, budget, mesh=sharding.make_mesh(1), dataset=mnist)
  assert run.step < 10_000 and run.summary["status"].startswith("time budget")
  assert train.make_checkpointer(run.setup).steps()[-1] == run.step
  again = train.train(config, budget, mesh=sharding.make_mesh(1), dataset=mnist)
  assert again.step == run.step


def test_monitor_scores_the_finite_samples_only(smoke_classifier, mnist, tmp_path):
  """A sampler that overflows on some samples (a flow's inverse can) must not
  stop training at a snapshot: the monitor scores the finite ones and counts
  the others."""
  del smoke_classifier
  config = smoke_config("dcgan_mnist")
  s, batch = setup_and_batch(config, mnist, tmp_path)
  state = train.init_state(s, batch)
  sample = s.family.sample

  def overflowing(bad):
    def draw(state, key, num, labels=None):
      images = sample(state, key, num, labels)
      return images.at[:bad].set(jnp.nan)
    return dataclasses.replace(s.family, sample=draw)

  found = train._CollapseMonitor(dataclasses.replace(s, family=overflowing(20)))(state)
  assert found["monitor_non_finite"] == 20
  assert np.isfinite(found["monitor_fd"]) and 0 <= found["monitor_recall"] <= 1
  clean = train._CollapseMonitor(s)(state)
  assert "monitor_non_finite" not in clean and np.isfinite(clean["monitor_fd"])
  nothing = train._CollapseMonitor(dataclasses.replace(
      s, family=overflowing(config.train.monitor_samples)))(state)
  assert nothing == {"monitor_non_finite": float(config.train.monitor_samples)}


def test_score_mode_scores_other_codebases_samples(smoke_classifier, mnist, tmp_path):
  del smoke_classifier
  s = train.setup(smoke_config("dcgan_mnist"), tmp_path, sharding.make_mesh(1), mnist)
  real = tmp_path / "real.npz"
  np.savez(real, images=mnist.test.images[:500])
  noise = tmp_path / "noise.npz"
  np.savez(noise, images=np.random.default_rng(0).integers(
      0, 256, (500, 28, 28, 1), dtype=np.uint8))
  real_fd = evaluate.score_file(s, real)["sample_metrics"]["fd_mnistnet_500"]
  noise_fd = evaluate.score_file(s, noise)["sample_metrics"]["fd_mnistnet_500"]
  assert real_fd < 0.1 * noise_fd
  assert json.loads((tmp_path / "real_scores.json").read_text())["samples"] == str(real)
  wrong = tmp_path / "wrong.npz"
  np.savez(wrong, images=np.zeros((10, 32, 32, 3), np.uint8))
  with pytest.raises(evaluate.SamplesError, match=r"expected \[N, 28, 28, 1\]"):
    evaluate.score_file(s, wrong)
