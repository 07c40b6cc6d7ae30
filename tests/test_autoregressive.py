"""The local autoregressive decoder head: causality, an exact normalized
likelihood, the per-pixel path against the parallel one, sequential decoding,
and the VAE that uses it."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_step_is_deterministic_and_learns, setup_and_batch
from configs import vae_cifar10, vae_mnist
from jaxgen import likelihoods, train
from jaxgen.nets.autoregressive import LocalARHead, decode_sequential


def head_and_params(context=3, channels=3, hidden=8, out_channels=5, size=6,
                    seed=0):
  head = LocalARHead(context=context, channels=channels, hidden=hidden,
                     out_channels=out_channels)
  params = head.init(jax.random.PRNGKey(seed),
                     jnp.zeros((1, size, size, hidden)),
                     jnp.zeros((1, size, size, channels)))
  return head, params


@pytest.mark.parametrize("context", [3, 5])
def test_each_pixel_sees_only_earlier_pixels_of_its_window(context):
  size, channels = 6, 2
  head, params = head_and_params(context, channels, size=size)
  features = jax.random.normal(jax.random.PRNGKey(1), (1, size, size, 8))
  x = jax.random.uniform(jax.random.PRNGKey(2), (1, size, size, channels))
  # d out[pixel q] / d x[pixel p], summed over channels: [H, W, H, W].
  jac = jax.jacfwd(lambda x: head.apply(params, features, x))(x)
  dependence = np.abs(np.asarray(jac)).sum(axis=(0, 3, 4, 7))
  reach = context // 2
  for (qi, qj), (pi, pj) in itertools.product(
      itertools.product(range(size), repeat=2), repeat=2):
    earlier = (pi, pj) < (qi, qj)          # raster order
    in_window = abs(pi - qi) <= reach and abs(pj - qj) <= reach
    if earlier and in_window:
      assert dependence[qi, qj, pi, pj] > 0, ((qi, qj), (pi, pj))
    else:
      assert dependence[qi, qj, pi, pj] == 0, ((qi, qj), (pi, pj))


def test_bernoulli_likelihood_over_all_binary_images_sums_to_one():
  # A causal product of normalized conditionals is normalized: summed over
  # all 2^9 binary 3x3 images, p(x | features) is 1.
  size = 3
  head, params = head_and_params(3, 1, out_channels=1, size=size)
  features = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (1, size, size, 8))
  images = np.array(list(itertools.product([0.0, 1.0], repeat=size * size)),
                    np.float32).reshape(-1, size, size, 1)
  logits = head.apply(params, jnp.broadcast_to(features, (len(images),
                                                          *features.shape[1:])),
                      jnp.asarray(images))
  log_p = -likelihoods.bernoulli_nll_nats(logits, jnp.asarray(images))
  np.testing.assert_allclose(float(jax.nn.logsumexp(log_p)), 0.0, atol=1e-5)


def test_per_pixel_path_matches_the_parallel_pass_at_every_pixel():
  size, channels, context = 5, 3, 5
  head, params = head_and_params(context, channels, size=size)
  features = jax.random.normal(jax.random.PRNGKey(4), (2, size, size, 8))
  x = jax.random.uniform(jax.random.PRNGKey(5), (2, size, size, channels))
  parallel = head.apply(params, features, x)
  pad = context // 2
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                   constant_values=0.5)   # 0 on the [-1, 1] scale, as "SAME"
  for i, j in itertools.product(range(size), repeat=2):
    window = padded[:, i:i + context, j:j + context]
    single = head.apply(params, features[:, i, j], window,
                        method=LocalARHead.at_pixel)
    np.testing.assert_allclose(single, parallel[:, i, j], rtol=1e-5, atol=1e-5)


def test_float32_image_meets_float64_params():
  # 8-bit pixels stay float32 while a float64 check casts the params (as
  # nn.Conv promotes its input); the parallel pass must take them.
  with jax.enable_x64(True):
    head, params = head_and_params()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    features = jax.random.normal(jax.random.PRNGKey(6), (1, 6, 6, 8), jnp.float64)
    x32 = jax.random.uniform(jax.random.PRNGKey(7), (1, 6, 6, 3), jnp.float32)
    out = head.apply(params, features, x32)
    assert out.dtype == jnp.float64
    np.testing.assert_array_equal(
        out, head.apply(params, features, x32.astype(jnp.float64)))


def test_sequential_decoding_is_consistent_with_the_parallel_pass():
  # Each pixel the sequential decoder writes is pixel_value of the parameters
  # the parallel pass gives for the finished image: the decoder read exactly
  # the pixels teacher forcing would have.
  size, channels = 6, 3
  k = 2
  likelihood = likelihoods.make("discretized_logistic", channels, k)
  head, params = head_and_params(3, channels, out_channels=likelihood.out_channels,
                                 size=size)
  features = jax.random.normal(jax.random.PRNGKey(6), (4, size, size, 8))
  key = jax.random.PRNGKey(7)
  images = decode_sequential(head, params, features, channels,
                             likelihood.sample, key)
  assert images.shape == (4, size, size, channels)
  np.testing.assert_allclose(np.round(np.asarray(images) * 255),
                             np.asarray(images) * 255, atol=1e-3)  # 8-bit
  out = head.apply(params, features, images)
  for index, (i, j) in enumerate(itertools.product(range(size), repeat=2)):
    expected = likelihood.sample(jax.random.fold_in(key, index),
                                 out[:, i:i + 1, j:j + 1])
    np.testing.assert_allclose(images[:, i:i + 1, j:j + 1], expected, atol=1e-6)
  # And the draws depend on the features (the latent reaches the pixels).
  other = decode_sequential(head, params, features + 3.0, channels,
                            likelihood.sample, key)
  assert not np.allclose(images, other)


@pytest.mark.parametrize("name", ["vae_cifar10", "vae_mnist"])
def test_autoregressive_vae_step_samples_and_views(name, request, tmp_path):
  module = {"vae_cifar10": vae_cifar10, "vae_mnist": vae_mnist}[name]
  dataset = request.getfixturevalue(name.split("_")[1])
  config = module.get_config("ar,smoke")   # the configs' AR option, shrunk
  assert config.model.ar_context == 5
  config.model.ar_hidden = 16
  config.optimizer.learning_rate = 3e-3
  s, batch = setup_and_batch(config, dataset, tmp_path)
  # From a near-uniform start the 8-bit likelihood falls slower per step than
  # the binary one: 5% takes more than 12 steps there.
  check_step_is_deterministic_and_learns(s, batch, num_steps=30)
  state = train.init_state(s, batch)
  assert "ar_head" in state.params
  images = jax.jit(s.family.sample, static_argnums=2)(
      state, jax.random.PRNGKey(0), 4)
  assert images.shape == (4, *dataset.spec.image_shape)
  values = np.asarray(images)
  assert values.min() >= 0.0 and values.max() <= 1.0
  if name == "vae_mnist":   # Bernoulli draws are binary
    assert set(np.unique(values)) <= {0.0, 1.0}
  views = s.family.views(state, batch, jax.random.PRNGKey(1))
  assert views["reconstructions"].shape[-3:] == dataset.spec.image_shape

