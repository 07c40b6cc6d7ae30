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
  np.testing.assert_allclose(total, 1.0, atol=1e-6)


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


def plain_mixture_log_probs(out, x01, channels, k):
  """PixelCNN++'s formula as published (channels last, a difference of
  sigmoids), for autodiff to check the closed-form gradient against."""
  lead = out.shape[:-1]
  logits = out[..., :k]
  means = out[..., k:k + channels * k].reshape(*lead, channels, k)
  log_scales = jnp.maximum(
      out[..., k + channels * k:k + 2 * channels * k].reshape(*lead, channels, k),
      -7.0)
  coeffs = jnp.tanh(out[..., k + 2 * channels * k:].reshape(*lead, -1, k))
  x = (x01 * 2 - 1)[..., None]
  coupled, index = [], 0
  for c in range(channels):
    mean = means[..., c, :]
    for j in range(c):
      mean = mean + coeffs[..., index, :] * x[..., j, :]
      index += 1
    coupled.append(mean)
  centered = x - jnp.stack(coupled, -2)
  plus = jnp.exp(-log_scales) * (centered + 1 / 255)
  minus = jnp.exp(-log_scales) * (centered - 1 / 255)
  # Upper tails above the mean: float64 keeps either form exact here.
  mass = jnp.where(centered > 0,
                   jax.nn.sigmoid(-minus) - jax.nn.sigmoid(-plus),
                   jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus))
  log_prob = jnp.where(x < -0.999, jax.nn.log_sigmoid(plus),
                       jnp.where(x > 0.999, jax.nn.log_sigmoid(-minus),
                                 jnp.log(mass)))
  return jax.nn.logsumexp(log_prob.sum(-2) + jax.nn.log_softmax(logits, -1), -1)


@pytest.mark.parametrize("channels,k", [(1, 3), (3, 5)])
def test_logistic_mixture_gradient_matches_autodiff_of_the_plain_formula(
    channels, k):
  """The likelihood's gradient is written out by hand (for speed); it must be
  autodiff's of the published formula, for the decoder's outputs (every
  block: logits, means, log-scales at and above their floor, couplings) and
  for the pixels, in reverse and forward mode."""
  with jax.enable_x64(True):
    key_out, key_x, key_t, key_w = jax.random.split(jax.random.PRNGKey(channels), 4)
    p = likelihoods.logistic_mixture_channels(channels, k)
    out = jax.random.normal(key_out, (2, 4, 5, p), jnp.float64)
    x01 = jax.random.randint(key_x, (2, 4, 5, channels), 0, 256) / 255.0
    x01 = x01.at[0, 0, 0].set(0.0).at[0, 0, 1].set(1.0)   # the edge bins
    # Means near the pixels (no bin's mass underflows the plain formula),
    # log-scales spread so some sit below the -7 floor.
    out = out.at[..., k:k + channels * k].set(
        jnp.repeat(x01 * 2 - 1, k, -1) + 0.2 * out[..., k:k + channels * k])
    out = out.at[..., k + channels * k:k + 2 * channels * k].multiply(3.0)
    assert jnp.any(out[..., k + channels * k:k + 2 * channels * k] < -7.0)
    weights = jax.random.normal(key_w, (2, 4, 5), jnp.float64)

    def weighted(log_probs):
      return lambda o, x: jnp.sum(weights * log_probs(o, x, channels, k))

    ours = weighted(likelihoods.logistic_mixture_log_probs)
    plain = weighted(plain_mixture_log_probs)
    np.testing.assert_allclose(ours(out, x01), plain(out, x01), rtol=1e-12)
    for got, want in zip(jax.grad(ours, (0, 1))(out, x01),
                         jax.grad(plain, (0, 1))(out, x01)):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    tangent = jax.random.normal(key_t, out.shape, jnp.float64)
    np.testing.assert_allclose(
        jax.jvp(lambda o: ours(o, x01), (out,), (tangent,))[1],
        jax.jvp(lambda o: plain(o, x01), (out,), (tangent,))[1], rtol=1e-9)


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
