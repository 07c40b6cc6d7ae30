"""VAE family specifics: the conditional decoder, KL warm-up, views."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import cvae_mnist, vae_mnist
from jaxgen import sharding, train


def setup_for(config, mnist, tmp_path):
  config.train.progress_bar = False
  return train.setup(config, tmp_path, sharding.make_mesh(1), mnist)


def batch_of(mnist, mesh, n=16):
  return sharding.put_batch({"image": mnist.test.images[:n],
                             "label": mnist.test.labels[:n]}, mesh)


def test_conditional_decoder_output_changes_with_only_the_label(mnist, tmp_path):
  s = setup_for(cvae_mnist.get_config("smoke"), mnist, tmp_path)
  assert s.family.conditional
  batch = batch_of(mnist, s.mesh)
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(0)
  sample = jax.jit(s.family.sample, static_argnums=2)
  as_zeros = sample(state, key, 8, jnp.zeros(8, jnp.int32))
  as_sevens = sample(state, key, 8, jnp.full(8, 7, jnp.int32))
  again = sample(state, key, 8, jnp.zeros(8, jnp.int32))
  np.testing.assert_array_equal(as_zeros, again)
  assert float(jnp.abs(as_zeros - as_sevens).max()) > 1e-4
  views = jax.jit(s.family.views)(state, batch, key)
  assert views["true_vs_wrong_labels"].shape == (8, 3, 28, 28, 1)
  assert views["class_by_style"].shape == (8, 10, 28, 28, 1)
  assert views["interpolations"].shape == (8, 10, 28, 28, 1)


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
