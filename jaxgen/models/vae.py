"""Autoencoders: the VAE (and beta-VAE, conditional VAE) and the plain AE.

VAE objective, per image x, encoder q(z|x) = N(mu, diag(sigma^2)), prior
p(z) = N(0, I), decoder p(x|z) a pixel likelihood (jaxgen/likelihoods.py:
Bernoulli for binarized MNIST, a discretized logistic mixture for 8-bit
images, or a fixed-variance Gaussian = MSE, which is not a likelihood):

    recon_nats = -log p(x|z),  z = mu + sigma * eps   (one sample)
    kl_nats    = KL(q(z|x) || p(z))                    (closed form)
    neg_elbo_nats = recon_nats + kl_nats               (>= -log p(x))
    loss       = recon_nats + beta * kl_nats           (beta = 1: the VAE)

All in nats per image, summed over pixels and latent dimensions; for 8-bit
likelihoods also in bits per dimension (nats / (H*W*C ln 2)).

With `model.ar_context = k` the decoder is locally autoregressive
(jaxgen/nets/autoregressive.py): p(x|z) = prod_i p(x_i | x_<i in i's k x k
window, z), still exact and evaluated in one teacher-forced pass; images are
then drawn pixel by pixel. `model.free_nats` floors each latent dimension's
batch-mean KL in the training loss (free bits), which such a decoder needs to
keep the latent in use; the reported bounds always use the true KL.

The AE (`model.family = "ae"`) has a deterministic encoder z = f(x), no prior
and no KL: its loss is recon_nats alone, which bounds nothing, and it has no
sample(): decoding N(0, I) noise is not a model of the data.

The latent is a vector of `latent_dim`, or with `latent_channels > 0` a map of
that many channels at the encoder's coarsest resolution (flattened to a vector
outside the networks, so every formula below is the same).

Data: with `data.binarize = "dynamic"` a training image's pixels are drawn as
Bernoulli(intensity) each time it is seen; evaluation is handed a test set
binarized once (see jaxgen/evaluate), on which the same draw is the identity.
With `data.binarize = "none"` the decoder is fit to intensities in [0, 1] by
cross-entropy, which is not a likelihood of discrete images; eval.json says so.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxgen import configlib, likelihoods, nets, optim
from jaxgen.data import DatasetSpec, binarize
from jaxgen.models import Batch, Family, Metrics
from jaxgen.nets.autoregressive import LocalARHead, decode_sequential
from jaxgen.nets.conv import ConvDecoder, ConvEncoder, append_channels


@flax.struct.dataclass
class VAEState:
  step: jax.Array
  params: Any        # {"encoder": ..., "decoder": ...}
  opt_state: Any


def add_model_config(config: ConfigDict, family: str = "vae") -> None:
  """The `model` fields of a VAE (or AE) config, at their defaults."""
  m = config.model
  m.family = family
  m.latent_dim = 32
  m.latent_channels = 0          # > 0: a latent map of this many channels
  m.likelihood = "bernoulli"     # | "discretized_logistic" | "gaussian"
  m.num_mixtures = 5             # discretized logistic mixture components
  m.gaussian_std = 0.1           # fixed std of the "gaussian" likelihood
  m.res_blocks = 0               # residual blocks per resolution
  m.beta = 1.0
  m.encoder_widths = (32, 64)    # strided 3x3 convs, fine to coarse
  m.decoder_widths = (64, 32)    # sub-pixel stages, coarse to fine
  m.hidden = 512                 # dense layer between convs and latent
  m.kl_warmup_steps = 0          # beta ramps linearly from 0 over these steps
  m.free_nats = 0.0              # free bits: KL floor per latent dim (training)
  # Label-conditional VAE: encoder and decoder both see the one-hot label.
  m.conditional = False
  # Local autoregressive decoder (jaxgen/nets/autoregressive.py): each pixel
  # also sees the already-generated pixels in its ar_context x ar_context
  # causal window. 0: the factorized decoder p(x|z) = prod_i p(x_i|z).
  m.ar_context = 0
  m.ar_hidden = 96               # the head's width (and the decoder's output)
  # The encoder's and decoder's compute dtype ("float32" | "bfloat16": GPU/TPU
  # tensor units); params, optimizer state, the AR head and the loss stay
  # float32.
  m.compute_dtype = "float32"


def shrink_model_for_smoke(config: ConfigDict) -> None:
  m = config.model
  m.latent_dim = 8
  m.encoder_widths = (8, 16)
  m.decoder_widths = (16, 8)
  m.hidden = 64


def validate(config: ConfigDict) -> None:
  configlib.require_positive(config, "model.latent_dim", "model.hidden",
                             "model.num_mixtures", "model.gaussian_std")
  configlib.require_positive(config, "model.beta", "model.kl_warmup_steps",
                             "model.free_nats",
                             "model.latent_channels", "model.res_blocks",
                             "model.ar_context", allow_zero=True)
  if config.model.ar_context:
    configlib.require(config, "model.ar_context",
                      config.model.ar_context >= 3 and config.model.ar_context % 2,
                      "must be 0 (factorized decoder) or an odd window size "
                      ">= 3 for the local autoregressive decoder")
    configlib.require_positive(config, "model.ar_hidden")
  configlib.require_one_of(config, "model.likelihood", likelihoods.NAMES)
  configlib.require_one_of(config, "model.compute_dtype", configlib.COMPUTE_DTYPES)
  if config.model.likelihood != "bernoulli":
    configlib.require(
        config, "data.binarize", config.data.binarize == "none",
        f"must be 'none' with model.likelihood={config.model.likelihood!r}, "
        "which models 8-bit intensities (binarized data takes 'bernoulli')")
  if config.model.family == "ae":
    configlib.refuse_iwae(config, "the AE has no posterior to importance-sample "
                          "(use model.family=vae)")
    configlib.require(config, "model.free_nats", not config.model.free_nats,
                      "must be 0 for the AE: it has no KL term to floor")
  configlib.require_widths(config, "model.encoder_widths", "model.decoder_widths")


def gaussian_kl_nats_per_dim(mean_BL: jax.Array, logvar_BL: jax.Array
                             ) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent dimension [B, L]."""
  return 0.5 * (jnp.exp(logvar_BL) + mean_BL ** 2 - 1.0 - logvar_BL)


def gaussian_kl_nats(mean_BL: jax.Array, logvar_BL: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats."""
  return jnp.sum(gaussian_kl_nats_per_dim(mean_BL, logvar_BL), -1)


def free_bits_kl_nats(kl_BL: jax.Array, free_nats: float) -> jax.Array:
  """The KL term of the free-bits objective (Kingma et al. 2016, IAF):
  sum over latent dimensions of max(free_nats, the dimension's KL averaged
  over the batch). Below the floor a dimension's KL costs nothing, so the
  decoder cannot buy a lower loss by letting the latent go unused; with
  free_nats = 0 it is the batch mean of the per-example KL."""
  return jnp.sum(jnp.maximum(free_nats, jnp.mean(kl_BL, 0)))


def _latent_layout(config: ConfigDict, spec: DatasetSpec
                   ) -> tuple[tuple[int, int, int] | None, int]:
  """(latent map shape or None, flat latent size)."""
  m = config.model
  if not m.latent_channels:
    return None, m.latent_dim
  height, width = spec.image_shape[:2]
  enc_factor = 2 ** len(m.encoder_widths)
  dec_factor = 2 ** len(m.decoder_widths)
  configlib.require(
      config, "model.decoder_widths", enc_factor == dec_factor,
      f"must have as many stages as model.encoder_widths "
      f"({len(m.encoder_widths)}) with a latent map (model.latent_channels > 0): "
      "the decoder starts at the encoder's coarsest resolution")
  grid = (height // enc_factor, width // enc_factor, m.latent_channels)
  return grid, grid[0] * grid[1] * grid[2]


def make(config: ConfigDict, spec: DatasetSpec) -> Family:
  validate(config)
  m = config.model
  variational = m.family == "vae"
  beta = float(m.beta) if variational else 0.0
  likelihood = likelihoods.make(m.likelihood, spec.image_shape[2],
                                m.num_mixtures, m.gaussian_std)
  latent_grid, latent_dim = _latent_layout(config, spec)
  code_size = 2 if variational else 1   # mean and log-variance, or the code
  dtype = nets.compute_dtype(m.compute_dtype)
  encoder = ConvEncoder(
      widths=tuple(m.encoder_widths), hidden=m.hidden, res_blocks=m.res_blocks,
      spatial=latent_grid is not None,
      num_outputs=code_size * (latent_grid[2] if latent_grid else latent_dim),
      dtype=dtype)
  channels = spec.image_shape[2]
  autoregressive = bool(m.ar_context)
  # With the AR head the decoder emits features, which the head turns into
  # the likelihood's parameters together with each pixel's causal window.
  decoder = ConvDecoder(image_shape=spec.image_shape,
                        widths=tuple(m.decoder_widths), hidden=m.hidden,
                        out_channels=(m.ar_hidden if autoregressive
                                      else likelihood.out_channels),
                        res_blocks=m.res_blocks, latent_grid=latent_grid,
                        dtype=dtype)
  ar_head = (LocalARHead(context=m.ar_context, channels=channels,
                         hidden=m.ar_hidden,
                         out_channels=likelihood.out_channels)
             if autoregressive else None)
  num_dims = spec.image_shape[0] * spec.image_shape[1] * spec.image_shape[2]
  # bits/dim for likelihoods of 8-bit pixels; binarized MNIST stays in nats.
  report_bpd = m.likelihood == "discretized_logistic"
  optimizer = optim.make_optimizer(config.optimizer, config.train.num_steps)
  dynamic = config.data.binarize == "dynamic"
  conditional = bool(m.conditional)
  num_classes = spec.num_classes
  kl_warmup_steps = int(m.kl_warmup_steps)
  free_nats = float(m.free_nats)

  def to_pixels(key: jax.Array, images_u8: jax.Array) -> jax.Array:
    if dynamic:
      return binarize(key, images_u8)
    return images_u8.astype(jnp.float32) / 255.0

  def encode(params, x_BHWC, labels_B=None):
    if conditional:  # the label as extra constant input channels
      x_BHWC = append_channels(
          x_BHWC, jax.nn.one_hot(labels_B, num_classes, dtype=x_BHWC.dtype))
    out = encoder.apply(params["encoder"], x_BHWC)
    if not variational:
      return out.reshape(out.shape[0], -1), None
    # Split channels (spatial) or features (vector), then flatten each half.
    mean, logvar = jnp.split(out, 2, -1)
    return mean.reshape(out.shape[0], -1), logvar.reshape(out.shape[0], -1)

  def decoder_out(params, z_BL, labels_B=None):
    onehot = (jax.nn.one_hot(labels_B, num_classes, dtype=z_BL.dtype)
              if conditional else None)
    return decoder.apply(params["decoder"], z_BL, onehot)

  def decode_params(params, z_BL, labels_B, x_BHWC):
    """The likelihood's parameters for the image x (which the AR head reads
    causally: teacher forcing, so -log p(x|z) is exact in one pass)."""
    out = decoder_out(params, z_BL, labels_B)
    if autoregressive:
      out = ar_head.apply(params["ar_head"], out, x_BHWC)
    return out

  def decode_images(params, z_BL, labels_B, key):
    """Images in [0, 1] from latents: the decoder means E[x|z] (factorized);
    with the AR head, draws from p(x|z), pixel by pixel, with `key`."""
    out = decoder_out(params, z_BL, labels_B)
    if not autoregressive:
      return likelihood.mean(out)
    return decode_sequential(ar_head, params["ar_head"], out, channels,
                             likelihood.sample, key)

  def neg_elbo_parts(params, x_BHWC, eps_BL, labels_B):
    mean_BL, logvar_BL = encode(params, x_BHWC, labels_B)
    if not variational:
      recon_nats = likelihood.nll_nats(
          decode_params(params, mean_BL, labels_B, x_BHWC), x_BHWC)
      return recon_nats, jnp.zeros_like(mean_BL)
    z_BL = mean_BL + jnp.exp(0.5 * logvar_BL) * eps_BL
    recon_nats = likelihood.nll_nats(
        decode_params(params, z_BL, labels_B, x_BHWC), x_BHWC)
    return recon_nats, gaussian_kl_nats_per_dim(mean_BL, logvar_BL)

  def with_bpd(metrics):
    if report_bpd:
      metrics.update({k.replace("_nats", "_bpd"): likelihoods.nats_to_bits_per_dim(
          v, num_dims) for k, v in list(metrics.items()) if k.endswith("_nats")})
    return metrics

  def named(recon, kl):
    if variational:
      return {"neg_elbo_nats": recon + kl, "recon_nats": recon, "kl_nats": kl}
    return {"recon_nats": recon}

  def init(key: jax.Array, example_batch: Batch) -> VAEState:
    enc_key, dec_key, head_key = jax.random.split(key, 3)
    extra = num_classes if conditional else 0
    x = jnp.zeros((1, *spec.image_shape[:2], spec.image_shape[2] + extra))
    params = {
        "encoder": encoder.init(enc_key, x),
        "decoder": decoder.init(dec_key, jnp.zeros((1, latent_dim)),
                                jnp.zeros((1, num_classes)) if conditional else None),
    }
    if autoregressive:
      height, width = spec.image_shape[:2]
      params["ar_head"] = ar_head.init(
          head_key, jnp.zeros((1, height, width, m.ar_hidden)),
          jnp.zeros((1, *spec.image_shape)))
    del example_batch  # shapes come from the dataset spec
    return VAEState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))

  def train_step(state: VAEState, batch: Batch, key: jax.Array
                 ) -> tuple[VAEState, Metrics]:
    pixel_key, eps_key = jax.random.split(key)
    x_BHWC = to_pixels(pixel_key, batch["image"])
    # Drawn with the global batch shape, so 1 or N devices see the same noise.
    eps_BL = jax.random.normal(eps_key, (x_BHWC.shape[0], latent_dim))

    kl_weight = beta
    if kl_warmup_steps:
      kl_weight = beta * jnp.minimum(1.0, state.step / kl_warmup_steps)

    def loss_fn(params):
      recon, kl_BL = neg_elbo_parts(params, x_BHWC, eps_BL, batch["label"])
      loss = jnp.mean(recon) + kl_weight * free_bits_kl_nats(kl_BL, free_nats)
      metrics = named(recon, jnp.sum(kl_BL, -1))
      return loss, with_bpd({k: jnp.mean(v) for k, v in metrics.items()})

    return optim.gradient_step(state, optimizer, loss_fn)

  def per_example_keys(key, index_B):
    # One key per test image, from its index: results do not depend on the
    # batch size or the number of devices.
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B)
    return jax.vmap(jax.random.split, out_axes=1)(keys)  # [2, B] keys

  iwae_samples = int(config.eval.get("iwae_samples", 0))
  iwae_chunk = min(iwae_samples, 50) if iwae_samples else 0

  def iwae_nats(params, x_BHWC, labels_B, keys_B):
    """-log of the k-sample importance-weighted bound (Burda et al. 2016).

    Samples are drawn in chunks of 50 under lax.map, so memory does not grow
    with k; each image's samples come from its own key.
    """
    mean_BL, logvar_BL = encode(params, x_BHWC, labels_B)
    std_BL = jnp.exp(0.5 * logvar_BL)
    log_2pi = jnp.log(2 * jnp.pi)

    def log_weights(chunk_index):  # [B, chunk]
      eps_BKL = jax.vmap(lambda k: jax.random.normal(
          jax.random.fold_in(k, chunk_index), (iwae_chunk, latent_dim)))(keys_B)
      z_BKL = mean_BL[:, None] + std_BL[:, None] * eps_BKL
      b = x_BHWC.shape[0]
      logits = decode_params(params, z_BKL.reshape(b * iwae_chunk, latent_dim),
                             jnp.repeat(labels_B, iwae_chunk),
                             jnp.repeat(x_BHWC, iwae_chunk, axis=0))
      logits = logits.reshape(b, iwae_chunk, *x_BHWC.shape[1:3], -1)
      log_px = -likelihood.nll_nats(logits, x_BHWC[:, None])
      log_pz = -0.5 * jnp.sum(z_BKL ** 2 + log_2pi, -1)
      log_qz = -0.5 * jnp.sum(eps_BKL ** 2 + log_2pi, -1) - 0.5 * jnp.sum(
          logvar_BL, -1)[:, None]
      return log_px + log_pz - log_qz

    num_chunks = -(-iwae_samples // iwae_chunk)
    log_w = jax.lax.map(log_weights, jnp.arange(num_chunks))  # [C, B, chunk]
    log_w = jnp.moveaxis(log_w, 0, 1).reshape(x_BHWC.shape[0], -1)[:, :iwae_samples]
    return -(jax.nn.logsumexp(log_w, -1) - jnp.log(iwae_samples))

  def evaluate(state: VAEState, batch: Batch, key: jax.Array) -> Metrics:
    pixel_keys, eps_keys = per_example_keys(key, batch["index"])
    x_BHWC = jax.vmap(to_pixels)(pixel_keys, batch["image"])
    eps_BL = jax.vmap(lambda k: jax.random.normal(k, (latent_dim,)))(eps_keys)
    recon, kl_BL = neg_elbo_parts(state.params, x_BHWC, eps_BL, batch["label"])
    metrics = named(recon, jnp.sum(kl_BL, -1))
    if iwae_samples:
      iwae_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(eps_keys)
      metrics[f"iwae{iwae_samples}_nats"] = iwae_nats(
          state.params, x_BHWC, batch["label"], iwae_keys)
    return with_bpd(metrics)

  def encode_mean(state: VAEState, batch: Batch) -> jax.Array:
    """Posterior means (the AE: codes) [B, latent_dim] of a batch; binarized
    test images pass through to_pixels unchanged, so the key is immaterial."""
    x_BHWC = to_pixels(jax.random.PRNGKey(0), batch["image"])
    return encode(state.params, x_BHWC, batch["label"])[0]

  def sample(state: VAEState, key: jax.Array, num: int, labels=None) -> jax.Array:
    """Decoder means E[x | z] of prior samples z ~ N(0, I) (the usual VAE
    picture; a draw from p(x | z) adds per-pixel noise), or with the AR head
    draws from p(x | z); conditional: for `labels` (default: 0, 1, ..., 9,
    0, 1, ...)."""
    z_BL = jax.random.normal(key, (num, latent_dim))
    if conditional and labels is None:
      labels = jnp.arange(num) % num_classes
    return decode_images(state.params, z_BL, labels, jax.random.fold_in(key, 1))

  def views(state: VAEState, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
    """Grids as [rows, cols, H, W, C]: reconstructions (input beside its
    decoded posterior mean), interpolations between test images in latent
    space, and for the conditional VAE the same images decoded with true and
    wrong labels, and a class-by-style grid."""
    draw_key = jax.random.fold_in(key, 1)
    x_BHWC = to_pixels(key, batch["image"])
    labels_B = batch["label"]
    mean_BL, _ = encode(state.params, x_BHWC, labels_B)
    # One key for every grid: with the AR head, images that differ only in z
    # or the label share their pixel noise.
    decode = lambda z, y: decode_images(state.params, z, y, draw_key)
    recon_BHWC = decode(mean_BL, labels_B)
    b = x_BHWC.shape[0]
    pairs_B2 = jnp.stack([x_BHWC, recon_BHWC], 1)
    out = {"reconstructions": (pairs_B2.reshape(-1, 8, *x_BHWC.shape[1:])
                               if b % 4 == 0 else pairs_B2)}
    # Interpolation: image i to image i + b/2, 10 steps, endpoints the inputs'
    # reconstructions; conditional: the label switches half way.
    pairs = max(1, min(8, b // 2))
    t_T = jnp.linspace(0.0, 1.0, 8)
    start, end = mean_BL[:pairs], mean_BL[b // 2:b // 2 + pairs]
    z_PTL = start[:, None] + t_T[None, :, None] * (end - start)[:, None]
    y_PT = jnp.where(t_T[None, :] < 0.5, labels_B[:pairs, None],
                     labels_B[b // 2:b // 2 + pairs, None])
    path = decode(z_PTL.reshape(-1, latent_dim), y_PT.reshape(-1))
    path = path.reshape(pairs, 8, *x_BHWC.shape[1:])
    out["interpolations"] = jnp.concatenate(
        [x_BHWC[:pairs, None], path, x_BHWC[b // 2:b // 2 + pairs, None]], 1)
    if conditional:
      rows = min(b, 8)
      wrong_B = (labels_B + 1 + jnp.arange(b) % (num_classes - 1)) % num_classes
      out["true_vs_wrong_labels"] = jnp.stack(
          [x_BHWC, recon_BHWC, decode(mean_BL, wrong_B)], 1)[:rows]
      # Each row: one image's style (posterior mean) decoded as every class.
      z_RC = jnp.repeat(mean_BL[:rows], num_classes, axis=0)
      y_RC = jnp.tile(jnp.arange(num_classes), rows)
      out["class_by_style"] = decode(z_RC, y_RC).reshape(
          rows, num_classes, *x_BHWC.shape[1:])
    if variational and latent_dim == 2 and not conditional:
      out["latent_manifold"] = latent_manifold(decode)
    return out

  def latent_manifold(decode, size: int = 16) -> jax.Array:
    """Decoded grid of a 2-D latent space at the prior's quantiles 0.03..0.97
    (Kingma & Welling 2014, fig. 4), as [size, size, H, W, C]."""
    q = jax.scipy.special.ndtri(jnp.linspace(0.03, 0.97, size))
    z1, z0 = jnp.meshgrid(-q, q, indexing="ij")   # z1 grows upward
    z_NL = jnp.stack([z0.ravel(), z1.ravel()], -1)
    return decode(z_NL, None).reshape(size, size, *spec.image_shape)

  protocol = _protocol(config, likelihood, dynamic, variational)
  if iwae_samples:
    protocol["iwae"] = (f"iwae{iwae_samples}_nats: -log of the importance-"
                        f"weighted bound with k={iwae_samples} posterior samples "
                        "per test image (Burda et al. 2016); tighter than the "
                        "ELBO, -> -log p(x) as k grows")
  if variational:
    protocol["beta"] = beta
  if free_nats:
    protocol["free_nats"] = (
        f"trained with free bits: each latent dimension's batch-mean KL "
        f"floored at {free_nats} nats in the loss; the reported bounds use the "
        "true KL")
  if conditional:
    protocol["conditional"] = ("encoder and decoder see the one-hot label; "
                               "ELBO of p(x | label)")
  return Family(name=m.family, init=init, train_step=train_step,
                sample=sample if variational else None,
                evaluate=evaluate, views=views, loss_key="loss",
                eval_protocol=protocol, conditional=conditional,
                encode=encode_mean)


def _protocol(config: ConfigDict, likelihood: likelihoods.PixelLikelihood,
              dynamic: bool, variational: bool) -> dict[str, str]:
  """What eval.json's numbers mean for this likelihood, data and family."""
  if dynamic:
    data = ("dynamically binarized: training pixels drawn as "
            "Bernoulli(intensity/255) each time an image is seen; the test "
            f"set binarized once with seed {config.data.test_binarize_seed}")
  elif likelihood.name == "discretized_logistic":
    data = ("8-bit pixels as they are: the decoder gives each of the 256 values "
            "of a pixel a probability, so no dequantization is involved")
  else:
    data = "8-bit intensities scaled to [0, 1], not binarized"
  decoder = {
      "bernoulli": "Bernoulli per pixel",
      "discretized_logistic": (
          f"mixture of {config.model.num_mixtures} discretized logistics per "
          "pixel, colour channels coupled linearly (PixelCNN++)"),
      "gaussian": (f"Gaussian per pixel with fixed std {config.model.gaussian_std}"
                   " on [0, 1] intensities (MSE)"),
  }[likelihood.name]
  if config.model.ar_context:
    k = config.model.ar_context
    decoder += (f"; local autoregressive: each pixel's parameters also see the "
                f"pixels before it in its {k}x{k} window (raster order), so "
                "p(x|z) is a product of exact conditionals and samples are "
                "drawn pixel by pixel")
  bound = "negative ELBO" if variational else "reconstruction NLL"
  if not likelihood.discrete or (likelihood.name == "bernoulli" and not dynamic):
    metric = (f"{bound} of the decoder's {likelihood.name} density on [0, 1] "
              "intensities, in nats per image: a training objective, NOT a "
              "likelihood of the 8-bit images and not comparable with one")
  elif variational:
    metric = ("negative ELBO in nats per image (upper bound on -log p(x)), one "
              "posterior sample per test image")
    if likelihood.name == "discretized_logistic":
      metric += "; *_bpd: the same in bits per dimension, nats / (H*W*C ln 2)"
  else:
    metric = ("reconstruction NLL -log p(x | z = f(x)) in nats per image: an "
              "autoencoder has no prior, so this bounds no likelihood and is "
              "not comparable with a VAE's negative ELBO")
  return {"metric": metric, "data": data, "decoder": decoder}
