"""Pixel likelihoods: normalization over the 256 values, means, bits/dim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import likelihoods

ALL_VALUES_01 = jnp.arange(256, dtype=jnp.float32) / 255.0


def random_mixture_params(key, channels, k, spread=1.0):
  """Decoder outputs for one pixel with varied means, scales and couplings."""
  p = likelihoods.logistic_mixture_channels(channels, k)
  return spread * jax.random.normal(key, (p,))


@pytest.mark.parametrize("seed", range(4))
def test_discretized_logistic_sums_to_one_over_a_grey_pixel(seed):
  k = 3
  out = random_mixture_params(jax.random.PRNGKey(seed), 1, k, spread=2.0)
  # Also a very sharp component (log-scale at its floor) and a very wide one.
  out = out.at[k + k:k + 2 * k].set(jnp.array([-7.0, 0.0, 3.0]))
  x = ALL_VALUES_01.reshape(1, 256, 1, 1)
  log_p = likelihoods.logistic_mixture_log_probs(
      jnp.broadcast_to(out, (1, 256, 1, out.size)), x, 1, k)
  total = np.sum(np.exp(np.asarray(log_p, np.float64)))
  np.testing.assert_allclose(total, 1.0, atol=2e-5)


def test_discretized_logistic_sums_to_one_over_all_colours():
  """The joint of a coupled RGB pixel sums to 1 over all 256^3 colours."""
  k = 2
  out = random_mixture_params(jax.random.PRNGKey(7), 3, k)
  gb = jnp.stack(jnp.meshgrid(ALL_VALUES_01, ALL_VALUES_01, indexing="ij"),
                 -1).reshape(256, 256, 2)

  def mass_for_red(red):
    x = jnp.concatenate([jnp.full((256, 256, 1), red), gb], -1)
    log_p = likelihoods.logistic_mixture_log_probs(
        jnp.broadcast_to(out, (256, 256, out.size)), x, 3, k)
    return jnp.sum(jnp.exp(log_p))

  per_red = jax.lax.map(mass_for_red, ALL_VALUES_01)
  np.testing.assert_allclose(np.sum(np.asarray(per_red, np.float64)), 1.0,
                             atol=1e-4)


def test_logistic_mixture_mean_matches_samples():
  k, channels = 3, 3
  key_params, key_sample = jax.random.split(jax.random.PRNGKey(3))
  out = 0.3 * random_mixture_params(key_params, channels, k)
  # Scales well inside the [0, 255] range so clipping at the edges is rare.
  out = out.at[k + 3 * k:k + 6 * k].set(-3.0)
  out_N = jnp.broadcast_to(out, (20_000, 1, 1, out.size))
  samples = likelihoods.logistic_mixture_sample(key_sample, out_N, channels, k)
  mean = likelihoods.logistic_mixture_mean(out[None, None, None], channels, k)
  np.testing.assert_allclose(np.mean(np.asarray(samples), 0).ravel(),
                             np.asarray(mean).ravel(), atol=0.01)
  # Samples are 8-bit values.
  np.testing.assert_allclose(np.asarray(samples) * 255,
                             np.round(np.asarray(samples) * 255), atol=1e-4)


def test_bernoulli_and_gaussian_by_hand():
  logits = jnp.array([[[[0.0], [2.0]]]])
  x = jnp.array([[[[1.0], [0.0]]]])
  expected = math.log(2.0) + math.log1p(math.exp(2.0))
  np.testing.assert_allclose(likelihoods.bernoulli_nll_nats(logits, x),
                             [expected], rtol=1e-6)
  mean = jnp.array([[[[0.5], [0.2]]]])
  std = 0.1
  expected = sum(0.5 * ((v - m) / std) ** 2 + math.log(std * math.sqrt(2 * math.pi))
                 for v, m in ((1.0, 0.5), (0.0, 0.2)))
  np.testing.assert_allclose(likelihoods.gaussian_nll_nats(mean, x, std),
                             [expected], rtol=1e-5)
  assert not likelihoods.make("gaussian", 1).discrete


def test_bits_per_dim():
  nats = 3072 * math.log(2.0) * 3.5
  assert likelihoods.nats_to_bits_per_dim(nats, 3072) == pytest.approx(3.5)


def test_unknown_likelihood_is_named():
  with pytest.raises(ValueError, match="poisson"):
    likelihoods.make("poisson", 1)
