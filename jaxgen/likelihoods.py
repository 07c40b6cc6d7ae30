"""Pixel likelihoods p(x | decoder output) for image decoders.

Every likelihood reads pixels as floats in [0, 1] (binary for binarized MNIST,
u8 / 255 for 8-bit images) and a decoder output of `out_channels(C)` channels
per pixel, and returns -log p(x) summed over an image, in nats:

* "bernoulli": one logit per channel. A likelihood of binary images; on [0, 1]
  intensities it is the usual cross-entropy objective, not a likelihood.
* "discretized_logistic": a mixture of K discretized logistics per pixel over
  the 256 values of an 8-bit channel (Salimans et al. 2017, PixelCNN++), with
  the colour channels of a pixel coupled linearly (G's mean depends on R, B's on
  R and G). Probabilities of the 256 values of a pixel sum to 1, so the
  negative ELBO in bits/dim is a real bound on the discrete data's NLL.
* "gaussian": a fixed-variance Gaussian density on [0, 1] intensities (the MSE
  objective). A density of continuous values, NOT a likelihood of 8-bit
  images: its nats are not comparable with the others'.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

NAMES = ("bernoulli", "discretized_logistic", "gaussian")
# Half the width of one 8-bit bin on the [-1, 1] scale.
_HALF_BIN = 1.0 / 255.0
_MIN_LOG_SCALE = -7.0


@dataclasses.dataclass(frozen=True)
class PixelLikelihood:
  name: str
  channels: int                 # image channels C
  out_channels: int             # decoder output channels per pixel
  # Is -log p a likelihood of the discrete data (so bits/dim is meaningful)?
  discrete: bool
  nll_nats: Callable[[jax.Array, jax.Array], jax.Array]     # (out, x01) -> [B]
  mean: Callable[[jax.Array], jax.Array]                    # out -> x01
  sample: Callable[[jax.Array, jax.Array], jax.Array]       # (key, out) -> x01


def make(name: str, channels: int, num_mixtures: int = 5,
         gaussian_std: float = 0.1) -> PixelLikelihood:
  if name == "bernoulli":
    return PixelLikelihood(
        name, channels, channels, discrete=True,
        nll_nats=bernoulli_nll_nats,
        mean=jax.nn.sigmoid,
        sample=lambda key, logits: jax.random.bernoulli(
            key, jax.nn.sigmoid(logits)).astype(jnp.float32))
  if name == "discretized_logistic":
    k = num_mixtures
    return PixelLikelihood(
        name, channels, logistic_mixture_channels(channels, k), discrete=True,
        nll_nats=lambda out, x01: logistic_mixture_nll_nats(out, x01, channels, k),
        mean=lambda out: logistic_mixture_mean(out, channels, k),
        sample=lambda key, out: logistic_mixture_sample(key, out, channels, k))
  if name == "gaussian":
    std = float(gaussian_std)
    return PixelLikelihood(
        name, channels, channels, discrete=False,
        nll_nats=lambda mean, x01: gaussian_nll_nats(mean, x01, std),
        mean=lambda mean: jnp.clip(mean, 0.0, 1.0),
        sample=lambda key, mean: jnp.clip(
            mean + std * jax.random.normal(key, mean.shape), 0.0, 1.0))
  raise ValueError(f"unknown likelihood {name!r}; choose one of {NAMES}")


def nats_to_bits_per_dim(nats: jax.Array, num_dims: int) -> jax.Array:
  return nats / (num_dims * math.log(2.0))


def bernoulli_nll_nats(logits_BHWC: jax.Array, x01_BHWC: jax.Array) -> jax.Array:
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits_BHWC, x01_BHWC),
                 axis=(-3, -2, -1))


def gaussian_nll_nats(mean_BHWC: jax.Array, x01_BHWC: jax.Array, std: float
                      ) -> jax.Array:
  z = (x01_BHWC - mean_BHWC) / std
  return jnp.sum(0.5 * z * z + math.log(std) + 0.5 * math.log(2 * math.pi),
                 axis=(-3, -2, -1))


def logistic_mixture_channels(channels: int, num_mixtures: int) -> int:
  """Per pixel: K logits, C*K means, C*K log-scales, C(C-1)/2*K couplings."""
  return num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


def _sum_leading(x: jax.Array) -> jax.Array:
  """jnp.sum(x, 0) for a short leading axis (K = 5 components, C = 3
  channels), as a chain of adds. Why: XLA's CPU reduction of a short
  outermost axis over long kept ones is not vectorized well ([5, 3, 64, 32,
  32]: 11.7 ms against 0.12 for the chain, 2 cores), and the likelihood puts
  the small axes first so its elementwise work runs along the pixels."""
  return functools.reduce(jnp.add, [x[i] for i in range(x.shape[0])])


def _logsumexp_leading(x: jax.Array) -> jax.Array:
  """jax.nn.logsumexp(x, 0) for a short leading axis, elementwise across its
  slices (as _sum_leading; [5, 3, 64, 32, 32]: 16.7 against 0.8 ms)."""
  slices = [x[i] for i in range(x.shape[0])]
  peak = functools.reduce(jnp.maximum, slices)
  total = functools.reduce(jnp.add, [jnp.exp(s - peak) for s in slices])
  return peak + jnp.log(total)


def _split_mixture(out, channels: int, k: int):
  """out [..., P] -> logits [K, ...], means, log_scales [C, K, ...], coeffs
  [C(C-1)/2, K, ...] (tanh-squashed): the small mixture and colour axes
  first, so the elementwise work runs along the long pixel axes (XLA's CPU
  loops vectorize the innermost axis: with K = 5 last, the training step's
  likelihood took 97 ms against 83 with it first, README "Benchmarks")."""
  logits, means, log_scales, coeffs = _split_leading(jnp.moveaxis(out, -1, 0),
                                                     channels, k)
  return logits, means, jnp.maximum(log_scales, _MIN_LOG_SCALE), coeffs


def _split_leading(out, channels: int, k: int):
  """_split_mixture of out [P, ...], the log-scales not yet clamped."""
  lead = out.shape[1:]
  pairs = channels * (channels - 1) // 2
  logits = out[:k]
  means = out[k:k + channels * k].reshape(channels, k, *lead)
  log_scales = out[k + channels * k:k + 2 * channels * k].reshape(channels, k, *lead)
  coeffs = jnp.tanh(out[k + 2 * channels * k:].reshape(pairs, k, *lead))
  return logits, means, log_scales, coeffs


def _couple(bases: list[jax.Array], coeffs: jax.Array | list[jax.Array],
            feed: Callable[[int, jax.Array], jax.Array]
            ) -> tuple[list[jax.Array], list[jax.Array]]:
  """PixelCNN++'s colour coupling, channel by channel: channel c's value is
  bases[c] + sum_{j<c} coeffs[.] * fed[j], where fed[j] = feed(j, value of
  channel j) is what later channels see (the data's value for a likelihood,
  the coupled mean for E[x], the clipped draw for a sample).
  Returns (the coupled values, the fed values)."""
  coupled, fed, index = [], [], 0
  for c, value in enumerate(bases):
    for j in range(c):
      value = value + coeffs[index] * fed[j]
      index += 1
    coupled.append(value)
    fed.append(feed(c, value))
  return coupled, fed


def logistic_mixture_log_probs(out_BHWP: jax.Array, x01_BHWC: jax.Array,
                               channels: int, k: int) -> jax.Array:
  """log p(pixel) of each pixel [B, H, W] (all its channels jointly)."""
  # [-1, 1] before the transpose, so that XLA still folds u8 -> [-1, 1]
  # into one multiply-add (the rounding the PyTorch twins' checks reproduce).
  return _log_probs_leading(_channels_first(out_BHWP),
                            _channels_first(x01_BHWC * 2.0 - 1.0), channels, k)


@jax.custom_jvp
def _channels_first(x: jax.Array) -> jax.Array:
  """jnp.moveaxis(x, -1, 0), materialized once. Why: on CPU, XLA fuses a
  plain moveaxis into every loop that reads the decoder's output, each then
  reading [B, H, W, 50] fifty floats apart (through the sub-pixel upsampling's
  transpose too): one such fusion took 60 of vae_cifar10's 330 ms per step.
  A product with the identity (exact at HIGHEST precision) is not fused, so
  the transpose is done once. Elsewhere the moveaxis is left to the compiler.
  The tangent is the plain moveaxis, so the gradient is the moveaxis back and
  not a second matrix product."""
  def copy_by_dot(x):
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.einsum("...p,pq->q...", x, eye,
                      precision=jax.lax.Precision.HIGHEST)

  return jax.lax.platform_dependent(
      x, cpu=copy_by_dot, default=lambda x: jnp.moveaxis(x, -1, 0))


@_channels_first.defjvp
def _channels_first_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return _channels_first(x), jnp.moveaxis(dx, -1, 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_probs_leading(out_P: jax.Array, x_C: jax.Array, channels: int,
                       k: int) -> jax.Array:
  return _log_probs_and_grads(out_P, x_C, channels, k, with_grads=False)[0]


@_log_probs_leading.defjvp
def _log_probs_leading_jvp(channels, k, primals, tangents):
  # The gradient is written out, not traced: autodiff of the forward pass
  # leaves some thirty [B, H, W]-sized loops (the pads of slice gradients,
  # the where-selects' zeros, the reductions' broadcasts) where the closed
  # form needs one pass and one [P, ...] array (README "Benchmarks").
  (out_P, x_C), (d_out_P, d_x_C) = primals, tangents
  log_p, grad_out_P, grad_x_C = _log_probs_and_grads(out_P, x_C, channels, k,
                                                     with_grads=True)
  # Plain sums: their transposes are the broadcasts reverse mode wants.
  return log_p, (jnp.sum(grad_out_P * d_out_P, 0)
                 + jnp.sum(grad_x_C * d_x_C, 0))


def _log_probs_and_grads(out_P, x_C, channels: int, k: int, with_grads: bool):
  """log p(pixel) [...] of the mixture with parameters out_P [P, ...] at the
  pixel x_C [C, ...] (in [-1, 1]), and, with_grads, its gradients [P, ...],
  [C, ...]."""
  logits, means, log_scales_raw, coeffs = _split_leading(out_P, channels, k)
  log_scales = jnp.maximum(log_scales_raw, _MIN_LOG_SCALE)
  x_C1 = x_C[:, None]                              # [C, 1, ...]
  coupled, _ = _couple(list(means), coeffs, lambda c, _: x_C1[c])
  centered = x_C1 - jnp.stack(coupled)
  inv_scale = jnp.exp(-log_scales)
  plus_in = inv_scale * (centered + _HALF_BIN)
  min_in = inv_scale * (centered - _HALF_BIN)
  softplus_neg_plus = jax.nn.softplus(-plus_in)   # -log P(X <= top of bin)
  softplus_min = jax.nn.softplus(min_in)          # -log P(X > bottom of bin)
  # An inner bin's mass, sigmoid(plus) - sigmoid(min), factored as
  # sigmoid(plus) (1 - sigmoid(min)) (1 - exp(-(plus - min))): exact in log
  # space wherever the bin sits (no cancellation between two cdfs near 1),
  # so no underflow guard is needed; its two softplus terms are the edge
  # bins' own, and the width term depends on the scale alone.
  expm1_width = jnp.expm1(-2.0 * _HALF_BIN * inv_scale)
  bottom, top = x_C1 < -0.999, x_C1 > 0.999          # values 0 and 255
  log_prob = jnp.where(bottom, -softplus_neg_plus,
                       jnp.where(top, -softplus_min,
                                 jnp.log(-expm1_width) - softplus_neg_plus
                                 - softplus_min))
  log_mix_K = logits - _logsumexp_leading(logits)
  log_prob_K = _sum_leading(log_prob) + log_mix_K
  log_p = _logsumexp_leading(log_prob_K)
  if not with_grads:
    return log_p, None, None
  # d log_prob / d plus_in and / d min_in (sigmoid(-plus), -sigmoid(min)).
  d_plus = jnp.where(top, 0.0, -jnp.expm1(-softplus_neg_plus))
  d_min = jnp.where(bottom, 0.0, jnp.expm1(-softplus_min))
  inner = jnp.logical_not(bottom | top)
  # d log(1 - exp(-2 h s)) / ds = 2 h / (exp(2 h s) - 1), s = inv_scale.
  d_width = jnp.where(inner, -2.0 * _HALF_BIN * (1.0 + 1.0 / expm1_width), 0.0)
  responsibility_K = jnp.exp(log_prob_K - log_p)   # p(component | pixel)
  d_centered = responsibility_K * inv_scale * (d_plus + d_min)
  d_log_scale = -responsibility_K * inv_scale * (
      d_plus * (centered + _HALF_BIN) + d_min * (centered - _HALF_BIN)
      + d_width)
  d_log_scale = jnp.where(log_scales_raw > _MIN_LOG_SCALE, d_log_scale, 0.0)
  d_logits = responsibility_K - jnp.exp(log_mix_K)
  # Channel c's coupled mean is means[c] + sum_{j<c} coeff * x_j.
  d_coeffs, d_x = [], [_sum_leading(d_centered[c]) for c in range(channels)]
  index = 0
  for c in range(channels):
    for j in range(c):
      d_coeffs.append(-d_centered[c] * x_C1[j, 0] * (1.0 - coeffs[index] ** 2))
      d_x[j] = d_x[j] - _sum_leading(d_centered[c] * coeffs[index])
      index += 1
  lead = out_P.shape[1:]
  grad_out_P = jnp.concatenate(
      [d_logits, -d_centered.reshape(channels * k, *lead),
       d_log_scale.reshape(channels * k, *lead)]
      + ([jnp.stack(d_coeffs).reshape(len(d_coeffs) * k, *lead)]
         if d_coeffs else []), 0)
  return log_p, grad_out_P, jnp.stack(d_x)


def logistic_mixture_nll_nats(out_BHWP: jax.Array, x01_BHWC: jax.Array,
                              channels: int, k: int) -> jax.Array:
  return -jnp.sum(logistic_mixture_log_probs(out_BHWP, x01_BHWC, channels, k),
                  axis=(-2, -1))


def logistic_mixture_mean(out_BHWP: jax.Array, channels: int, k: int
                          ) -> jax.Array:
  """E[x] in [0, 1] (ignoring the clipping at the edges): within component k,
  E[x_c] = mu_c + sum_j coeff * E[x_j | k]."""
  logits, means, _, coeffs = _split_mixture(out_BHWP, channels, k)
  component_means, _ = _couple(list(means), coeffs, lambda c, value: value)
  mean = jnp.sum(jnp.stack(component_means) * jax.nn.softmax(logits, 0), 1)
  mean = jnp.moveaxis(mean, 0, -1)                                # [..., C]
  return jnp.clip((mean + 1.0) / 2.0, 0.0, 1.0)


def logistic_mixture_sample(key: jax.Array, out_BHWP: jax.Array, channels: int,
                            k: int) -> jax.Array:
  """A draw of 8-bit pixels, as u8 / 255."""
  logits, means, log_scales, coeffs = (
      jnp.moveaxis(a, (0, 1), (-2, -1)) if a.ndim == out_BHWP.ndim + 1
      else jnp.moveaxis(a, 0, -1)
      for a in _split_mixture(out_BHWP, channels, k))   # [..., K], [..., C, K]
  pick_key, noise_key = jax.random.split(key)
  component = jax.random.categorical(pick_key, logits)            # [B, H, W]
  onehot = jax.nn.one_hot(component, k)[..., None, :]             # [.., 1, K]
  mu = jnp.sum(means * onehot, -1)
  log_s = jnp.sum(log_scales * onehot, -1)
  coeff = jnp.sum(coeffs * onehot, -1)
  u = jax.random.uniform(noise_key, mu.shape, minval=1e-5, maxval=1.0 - 1e-5)
  noise = jnp.exp(log_s) * (jnp.log(u) - jnp.log1p(-u))
  _, values = _couple([mu[..., c] + noise[..., c] for c in range(channels)],
                      [coeff[..., i] for i in range(coeff.shape[-1])],
                      lambda c, value: jnp.clip(value, -1.0, 1.0))
  x = jnp.stack(values, -1)
  return jnp.round((x + 1.0) * 127.5) / 255.0


def discretized_gaussian_log_probs(x_pm1: jax.Array, mean: jax.Array,
                                   log_scale: jax.Array) -> jax.Array:
  """log P(x) per value for 8-bit data on the [-1, 1] scale (x = 2 k/255 - 1)
  under a Gaussian discretized to the 256 bins: the mass of [x - 1/255,
  x + 1/255], the end bins reaching out to -inf and +inf so the 256
  probabilities sum to 1 (DDPM's decoder at t = 0)."""
  logcdf = jax.scipy.stats.norm.logcdf
  inv_std = jnp.exp(-log_scale)
  a = inv_std * (x_pm1 - mean - _HALF_BIN)   # bin edges, standardised
  b = inv_std * (x_pm1 - mean + _HALF_BIN)
  # log(cdf(b) - cdf(a)) without cancellation: where both cdfs are near 1,
  # take the difference of the upper tails, 1 - cdf(z) = cdf(-z), instead.
  lower_side = b <= 0
  hi = jnp.where(lower_side, logcdf(b), logcdf(-a))
  lo = jnp.where(lower_side, logcdf(a), logcdf(-b))
  log_mass = hi + jnp.log(-jnp.expm1(jnp.minimum(lo - hi, -1e-12)))
  return jnp.where(x_pm1 < -0.999, logcdf(b),
                   jnp.where(x_pm1 > 0.999, logcdf(-a), log_mass))
