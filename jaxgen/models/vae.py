"""Variational autoencoder (and beta-VAE) with a Bernoulli decoder.

Objective, per image x (pixels in {0, 1}), encoder q(z|x) = N(mu, diag(sigma^2)),
prior p(z) = N(0, I), decoder p(x|z) = prod Bernoulli(sigmoid(logits)):

    recon_nats = -log p(x|z),  z = mu + sigma * eps   (one sample)
    kl_nats    = KL(q(z|x) || p(z))                    (closed form)
    neg_elbo_nats = recon_nats + kl_nats               (>= -log p(x))
    loss       = recon_nats + beta * kl_nats           (beta = 1: the VAE)

All in nats per image, summed over pixels and latent dimensions.

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
import optax
from ml_collections import ConfigDict

from jaxgen import configlib, optim
from jaxgen.data import DatasetSpec, binarize
from jaxgen.models import Batch, Family, Metrics
from jaxgen.nets.conv import ConvDecoder, ConvEncoder


@flax.struct.dataclass
class VAEState:
  step: jax.Array
  params: Any        # {"encoder": ..., "decoder": ...}
  opt_state: Any


def add_model_config(config: ConfigDict) -> None:
  """The `model` fields of a VAE config, at their defaults."""
  m = config.model
  m.family = "vae"
  m.latent_dim = 32
  m.beta = 1.0
  m.encoder_widths = (32, 64)    # strided 3x3 convs, fine to coarse
  m.decoder_widths = (64, 32)    # sub-pixel stages, coarse to fine
  m.hidden = 512                 # dense layer between convs and latent
  m.kl_warmup_steps = 0          # beta ramps linearly from 0 over these steps
  # Label-conditional VAE: encoder and decoder both see the one-hot label.
  m.conditional = False


def shrink_model_for_smoke(config: ConfigDict) -> None:
  m = config.model
  m.latent_dim = 8
  m.encoder_widths = (8, 16)
  m.decoder_widths = (16, 8)
  m.hidden = 64


def validate(config: ConfigDict) -> None:
  configlib.require_positive(config, "model.latent_dim", "model.hidden")
  configlib.require_positive(config, "model.beta", "model.kl_warmup_steps",
                             allow_zero=True)
  for path in ("model.encoder_widths", "model.decoder_widths"):
    widths = configlib.get(config, path)
    configlib.require(
        config, path,
        isinstance(widths, (tuple, list)) and len(widths) > 0
        and all(isinstance(w, int) and w > 0 for w in widths),
        "must be a non-empty tuple of positive ints, e.g. '(32, 64)'")


def gaussian_kl_nats(mean_BL: jax.Array, logvar_BL: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats."""
  return 0.5 * jnp.sum(jnp.exp(logvar_BL) + mean_BL ** 2 - 1.0 - logvar_BL, -1)


def bernoulli_nll_nats(logits_BHWC: jax.Array, x_BHWC: jax.Array) -> jax.Array:
  """-log p(x | logits) per example for pixels in {0, 1}, in nats."""
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits_BHWC, x_BHWC),
                 axis=(1, 2, 3))


def make(config: ConfigDict, spec: DatasetSpec) -> Family:
  validate(config)
  m = config.model
  latent_dim, beta = m.latent_dim, float(m.beta)
  encoder = ConvEncoder(widths=tuple(m.encoder_widths), hidden=m.hidden,
                        num_outputs=2 * latent_dim)
  decoder = ConvDecoder(image_shape=spec.image_shape,
                        widths=tuple(m.decoder_widths), hidden=m.hidden)
  optimizer = optim.make_optimizer(config.optimizer, config.train.num_steps)
  dynamic = config.data.binarize == "dynamic"
  conditional = bool(m.conditional)
  num_classes = spec.num_classes
  kl_warmup_steps = int(m.kl_warmup_steps)

  def to_pixels(key: jax.Array, images_u8: jax.Array) -> jax.Array:
    if dynamic:
      return binarize(key, images_u8)
    return images_u8.astype(jnp.float32) / 255.0

  def encode(params, x_BHWC, labels_B=None):
    if conditional:  # the label as extra constant input channels
      onehot = jax.nn.one_hot(labels_B, num_classes, dtype=x_BHWC.dtype)
      x_BHWC = jnp.concatenate(
          [x_BHWC, jnp.broadcast_to(onehot[:, None, None, :],
                                    (*x_BHWC.shape[:3], num_classes))], -1)
    mean_BL, logvar_BL = jnp.split(encoder.apply(params["encoder"], x_BHWC), 2, -1)
    return mean_BL, logvar_BL

  def decode_logits(params, z_BL, labels_B=None):
    if conditional:
      z_BL = jnp.concatenate(
          [z_BL, jax.nn.one_hot(labels_B, num_classes, dtype=z_BL.dtype)], -1)
    return decoder.apply(params["decoder"], z_BL)

  def neg_elbo_parts(params, x_BHWC, eps_BL, labels_B):
    mean_BL, logvar_BL = encode(params, x_BHWC, labels_B)
    z_BL = mean_BL + jnp.exp(0.5 * logvar_BL) * eps_BL
    recon_nats = bernoulli_nll_nats(decode_logits(params, z_BL, labels_B), x_BHWC)
    return recon_nats, gaussian_kl_nats(mean_BL, logvar_BL)

  def init(key: jax.Array, example_batch: Batch) -> VAEState:
    enc_key, dec_key = jax.random.split(key)
    extra = num_classes if conditional else 0
    x = jnp.zeros((1, *spec.image_shape[:2], spec.image_shape[2] + extra))
    params = {
        "encoder": encoder.init(enc_key, x),
        "decoder": decoder.init(dec_key, jnp.zeros((1, latent_dim + extra))),
    }
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
      recon, kl = neg_elbo_parts(params, x_BHWC, eps_BL, batch["label"])
      loss = jnp.mean(recon + kl_weight * kl)
      return loss, {"recon_nats": jnp.mean(recon), "kl_nats": jnp.mean(kl),
                    "neg_elbo_nats": jnp.mean(recon + kl)}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state), metrics

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
      logits = decode_logits(params, z_BKL.reshape(b * iwae_chunk, latent_dim),
                             jnp.repeat(labels_B, iwae_chunk))
      logits = logits.reshape(b, iwae_chunk, *x_BHWC.shape[1:])
      log_px = -jnp.sum(optax.sigmoid_binary_cross_entropy(
          logits, x_BHWC[:, None]), axis=(2, 3, 4))
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
    recon, kl = neg_elbo_parts(state.params, x_BHWC, eps_BL, batch["label"])
    metrics = {"neg_elbo_nats": recon + kl, "recon_nats": recon, "kl_nats": kl}
    if iwae_samples:
      iwae_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(eps_keys)
      metrics[f"iwae{iwae_samples}_nats"] = iwae_nats(
          state.params, x_BHWC, batch["label"], iwae_keys)
    return metrics

  def sample(state: VAEState, key: jax.Array, num: int, labels=None) -> jax.Array:
    """Bernoulli means of decoded prior samples; conditional: for `labels`
    (default: 0, 1, ..., 9, 0, 1, ...)."""
    z_BL = jax.random.normal(key, (num, latent_dim))
    if conditional and labels is None:
      labels = jnp.arange(num) % num_classes
    return jax.nn.sigmoid(decode_logits(state.params, z_BL, labels))

  def views(state: VAEState, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
    """Grids as [rows, cols, H, W, C]: reconstructions (input beside its
    decoded posterior mean), interpolations between test images in latent
    space, and for the conditional VAE the same images decoded with true and
    wrong labels, and a class-by-style grid."""
    x_BHWC = to_pixels(key, batch["image"])
    labels_B = batch["label"]
    mean_BL, _ = encode(state.params, x_BHWC, labels_B)
    decode = lambda z, y: jax.nn.sigmoid(decode_logits(state.params, z, y))
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
    return out

  if dynamic:
    protocol = {
        "metric": "negative ELBO in nats per image (upper bound on -log p(x)), "
                  "one posterior sample per test image",
        "data": "dynamically binarized: training pixels drawn as "
                "Bernoulli(intensity/255) each time an image is seen; the test "
                f"set binarized once with seed {config.data.test_binarize_seed}",
    }
  else:
    protocol = {
        "metric": "Bernoulli cross-entropy of [0, 1] intensities plus KL, in "
                  "nats per image: a training objective, NOT a likelihood of "
                  "the 8-bit images",
        "data": "8-bit intensities scaled to [0, 1], not binarized",
    }
  if iwae_samples:
    protocol["iwae"] = (f"iwae{iwae_samples}_nats: -log of the importance-"
                        f"weighted bound with k={iwae_samples} posterior samples "
                        "per test image (Burda et al. 2016); tighter than the "
                        "ELBO, -> -log p(x) as k grows")
  protocol["decoder"] = "Bernoulli"
  protocol["beta"] = beta
  if conditional:
    protocol["conditional"] = ("encoder and decoder see the one-hot label; "
                               "ELBO of p(x | label)")
  return Family(name="vae", init=init, train_step=train_step, sample=sample,
                evaluate=evaluate, views=views, loss_key="loss",
                eval_protocol=protocol, conditional=conditional)
