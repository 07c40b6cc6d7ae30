"""Autoencoder family specifics: every config's step, the AE, likelihoods,
the conditional decoder, KL warm-up, latent views and statistics."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_bfloat16_compute, check_step_is_deterministic_and_learns
from configs import ae_mnist, cvae_cifar10, cvae_mnist, vae_cifar10, vae_mnist
from jaxgen import configlib, evaluate, sharding, train
from jaxgen.models import vae
from jaxgen.nets.conv import ConvDecoder, ConvEncoder

CONFIGS = {"ae_mnist": ae_mnist, "vae_mnist": vae_mnist, "cvae_mnist": cvae_mnist,
           "vae_cifar10": vae_cifar10, "cvae_cifar10": cvae_cifar10}


def setup_for(config, dataset, tmp_path):
  config.train.progress_bar = False
  return train.setup(config, tmp_path, sharding.make_mesh(1), dataset)


def batch_of(dataset, mesh, n=16, split="test"):
  split = dataset.split(split)
  return sharding.put_batch({"image": split.images[:n],
                             "label": split.labels[:n]}, mesh)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_smoke_step_is_deterministic_and_learns(name, datasets, tmp_path):
  dataset = datasets(name)
  config = CONFIGS[name].get_config("smoke")
  config.optimizer.learning_rate = 3e-3
  s = setup_for(config, dataset, tmp_path)
  batch = batch_of(dataset, s.mesh, 32, "train")
  metrics = check_step_is_deterministic_and_learns(s, batch)
  if name.endswith("cifar10"):  # an 8-bit likelihood: bits/dim alongside nats
    np.testing.assert_allclose(
        metrics["neg_elbo_bpd"], metrics["neg_elbo_nats"] / (3072 * np.log(2)),
        rtol=1e-5)


@pytest.mark.parametrize("res_blocks", [0, 1])
def test_bfloat16_encoder_and_decoder_keep_float32_params_and_output(res_blocks):
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  encoder = dict(widths=(8, 16), hidden=32, num_outputs=6, res_blocks=res_blocks)
  variables = ConvEncoder(**encoder).init(jax.random.PRNGKey(1), images)
  check_bfloat16_compute(ConvEncoder(**encoder),
                         ConvEncoder(**encoder, dtype=jnp.bfloat16), variables, images)
  z, label = jax.random.normal(jax.random.PRNGKey(2), (4, 3)), jnp.eye(10)[:4]
  decoder = dict(image_shape=(28, 28, 1), widths=(16, 8), hidden=32,
                 res_blocks=res_blocks)
  variables = ConvDecoder(**decoder).init(jax.random.PRNGKey(3), z, label)
  check_bfloat16_compute(ConvDecoder(**decoder),
                         ConvDecoder(**decoder, dtype=jnp.bfloat16), variables, z, label)


@pytest.mark.parametrize("name", ["vae_mnist", "vae_cifar10"])
def test_bfloat16_step_is_deterministic_and_learns(name, datasets, tmp_path):
  dataset = datasets(name)
  config = CONFIGS[name].get_config("smoke")
  config.model.compute_dtype = "bfloat16"
  config.optimizer.learning_rate = 3e-3
  s = setup_for(config, dataset, tmp_path)
  check_step_is_deterministic_and_learns(s, batch_of(dataset, s.mesh, 32, "train"))


def test_ae_has_no_kl_no_sampler_and_scores_reconstruction(mnist, tmp_path):
  s = setup_for(ae_mnist.get_config("smoke"), mnist, tmp_path)
  assert s.family.name == "ae" and s.family.sample is None
  batch = batch_of(mnist, s.mesh)
  state = train.init_state(s, batch)
  _, metrics = jax.jit(s.family.train_step)(state, batch, jax.random.PRNGKey(0))
  assert "kl_nats" not in metrics
  assert float(metrics["loss"]) == float(metrics["recon_nats"])
  assert "bounds no likelihood" in s.family.eval_protocol["metric"]
  # Codes are deterministic: the same image gives the same code.
  codes = jax.jit(s.family.encode)(state, batch)
  np.testing.assert_array_equal(codes, jax.jit(s.family.encode)(state, batch))
  assert codes.shape == (16, s.config.model.latent_dim)


@pytest.mark.parametrize("override, key", [
    ({"model.likelihood": "discretized_logistic"}, "data.binarize"),
    ({"eval.iwae_samples": 10, "model.family": "ae"}, "eval.iwae_samples"),
    ({"model.latent_channels": 4, "model.decoder_widths": (16,)},
     "model.decoder_widths"),
    ({"model.likelihood": "laplace"}, "model.likelihood"),
    ({"model.ar_context": 2}, "model.ar_context"),
    ({"model.ar_context": 1}, "model.ar_context"),
    ({"model.ar_context": -3}, "model.ar_context"),
    ({"model.ar_context": 3, "model.ar_hidden": 0}, "model.ar_hidden"),
    ({"model.free_nats": -0.1}, "model.free_nats"),
    ({"model.free_nats": 0.5, "model.family": "ae"}, "model.free_nats"),
    ({"model.compute_dtype": "float16"}, "model.compute_dtype"),
])
def test_inconsistent_model_settings_name_the_key(override, key, mnist, tmp_path):
  config = vae_mnist.get_config("smoke")
  for path, value in override.items():
    section, field = path.split(".")
    config[section][field] = value
  with pytest.raises(configlib.ConfigError, match=re.escape(key)):
    setup_for(config, mnist, tmp_path)


@pytest.mark.parametrize("name", ["cvae_mnist", "cvae_cifar10"])
def test_conditional_decoder_output_changes_with_only_the_label(name, datasets,
                                                                tmp_path):
  dataset = datasets(name)
  s = setup_for(CONFIGS[name].get_config("smoke"), dataset, tmp_path)
  assert s.family.conditional
  batch = batch_of(dataset, s.mesh)
  shape = dataset.spec.image_shape
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(0)
  sample = jax.jit(s.family.sample, static_argnums=2)
  as_zeros = sample(state, key, 8, jnp.zeros(8, jnp.int32))
  as_sevens = sample(state, key, 8, jnp.full(8, 7, jnp.int32))
  again = sample(state, key, 8, jnp.zeros(8, jnp.int32))
  np.testing.assert_array_equal(as_zeros, again)
  assert float(jnp.abs(as_zeros - as_sevens).max()) > 1e-4
  views = jax.jit(s.family.views)(state, batch, key)
  assert views["true_vs_wrong_labels"].shape == (8, 3, *shape)
  assert views["class_by_style"].shape == (8, 10, *shape)
  assert views["interpolations"].shape == (8, 10, *shape)


def test_unconditional_vae_ignores_labels(mnist, tmp_path):
  s = setup_for(vae_mnist.get_config("smoke"), mnist, tmp_path)
  assert not s.family.conditional
  state = train.init_state(s, batch_of(mnist, s.mesh))
  views = jax.jit(s.family.views)(state, batch_of(mnist, s.mesh),
                                  jax.random.PRNGKey(0))
  assert set(views) == {"reconstructions", "interpolations"}
  assert views["reconstructions"].shape == (4, 8, 28, 28, 1)  # 16 pairs


def test_kl_warmup_scales_the_kl_term(mnist, tmp_path):
  config = vae_mnist.get_config("smoke")
  config.model.kl_warmup_steps = 100
  s = setup_for(config, mnist, tmp_path)
  batch = sharding.put_batch({"image": mnist.train.images[:32],
                              "label": mnist.train.labels[:32]}, s.mesh)
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(1)
  step = jax.jit(s.family.train_step)
  _, at_start = step(state, batch, key)
  # At step 0 the KL weight is 0: the loss is the reconstruction term alone.
  np.testing.assert_allclose(at_start["loss"], at_start["recon_nats"], rtol=1e-6)
  halfway = state.replace(step=jnp.asarray(50, jnp.int32))
  _, at_half = step(halfway, batch, key)
  np.testing.assert_allclose(
      at_half["loss"], at_half["recon_nats"] + 0.5 * at_half["kl_nats"], rtol=1e-5)


def test_free_bits_floor_each_dimension_batch_mean_kl():
  kl_BL = jnp.array([[0.1, 2.0, 0.0], [0.3, 0.0, 0.0]])   # batch means .2, 1, 0
  np.testing.assert_allclose(vae.free_bits_kl_nats(kl_BL, 0.5), 0.5 + 1.0 + 0.5)
  np.testing.assert_allclose(vae.free_bits_kl_nats(kl_BL, 0.0),
                             jnp.mean(jnp.sum(kl_BL, -1)), rtol=1e-6)
  # Below the floor a dimension's KL has no gradient; above it, its own.
  grad = jax.grad(vae.free_bits_kl_nats)(kl_BL, 0.5)
  np.testing.assert_allclose(grad, [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]])


def test_free_bits_change_the_loss_not_the_reported_bound(mnist, tmp_path):
  config = vae_mnist.get_config("smoke")
  s = setup_for(config, mnist, tmp_path)
  batch = sharding.put_batch({"image": mnist.train.images[:32],
                              "label": mnist.train.labels[:32]}, s.mesh)
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(1)
  _, plain = jax.jit(s.family.train_step)(state, batch, key)
  np.testing.assert_allclose(plain["loss"], plain["neg_elbo_nats"], rtol=1e-5)
  config.model.free_nats = 5.0   # above any dimension's KL at initialization
  s = setup_for(config, mnist, tmp_path / "free")
  _, floored = jax.jit(s.family.train_step)(state, batch, key)
  np.testing.assert_allclose(floored["neg_elbo_nats"], plain["neg_elbo_nats"],
                             rtol=1e-6)
  np.testing.assert_allclose(
      floored["loss"], floored["recon_nats"] + 5.0 * config.model.latent_dim,
      rtol=1e-5)


def test_two_dimensional_latent_gets_a_manifold_view(mnist, tmp_path):
  config = vae_mnist.get_config("smoke")
  config.model.latent_dim = 2
  s = setup_for(config, mnist, tmp_path)
  batch = batch_of(mnist, s.mesh)
  state = train.init_state(s, batch)
  views = jax.jit(s.family.views)(state, batch, jax.random.PRNGKey(0))
  manifold = np.asarray(views["latent_manifold"])
  assert manifold.shape == (16, 16, 28, 28, 1)
  assert np.all((manifold >= 0) & (manifold <= 1))
  # Different latent points decode to different images.
  assert np.abs(manifold[0, 0] - manifold[-1, -1]).max() > 1e-4


def test_active_units_counts_units_that_vary():
  rng = np.random.default_rng(0)
  codes = np.concatenate([rng.normal(size=(5000, 3)),          # active
                          0.05 * rng.normal(size=(5000, 2)),   # var 0.0025
                          np.full((5000, 1), 3.0)], 1)         # constant
  assert evaluate.active_units(codes) == 3
  assert evaluate.active_units(codes, threshold=0.001) == 5


def test_eval_reports_active_units_and_writes_the_latent_scatter(mnist, tmp_path):
  config = vae_mnist.get_config("smoke")
  config.train.num_steps = 40
  config.eval.num_samples = 0
  config.train.eval_at_end = False
  config.train.progress_bar = False
  run = train.train(config, tmp_path, mesh=sharding.make_mesh(1), dataset=mnist)
  result = evaluate.run(run.setup, run.state)
  latent = result["latent"]
  assert latent["latent_dim"] == config.model.latent_dim
  assert 0 < latent["active_units"] <= config.model.latent_dim
  assert (tmp_path / "latent_scatter.png").stat().st_size > 10_000
  assert json.loads((tmp_path / "eval.json").read_text())["latent"] == latent
  # An encoder whose output layer is zeroed ignores its input: every unit
  # collapses.
  params = jax.tree.map(lambda x: x, run.state.params)
  last = sorted(k for k in params["encoder"]["params"] if k.startswith("Dense"))[-1]
  params["encoder"]["params"][last] = jax.tree.map(
      jnp.zeros_like, params["encoder"]["params"][last])
  collapsed = evaluate.latent_statistics(
      run.setup, run.state.replace(params=params), run.setup.dataset.test)
  assert collapsed["active_units"] == 0
