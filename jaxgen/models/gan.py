"""GANs: DCGAN and the stronger variants (hinge, WGAN-GP, spectral norm).

A generator G maps noise z ~ N(0, I) (and, conditional, a label) to an image
in [-1, 1]; a discriminator (critic) D scores images. Losses, with D's raw
score s = D(x) for real images and s~ = D(G(z)) for generated ones:

    nonsaturating (DCGAN):  disc_loss = softplus(-s) + softplus(s~)
                            (cross-entropy: real -> 1, fake -> 0)
                            gen_loss  = softplus(-s~)   (fakes called real)
    hinge:                  disc_loss = relu(1 - s) + relu(1 + s~)
                            gen_loss  = -s~
    wgan_gp:                disc_loss = s~ - s + gp_weight * (|grad D(x^)| - 1)^2
                            gen_loss  = -s~
                            x^ = e x + (1 - e) G(z), e ~ U(0, 1) per image

With `model.aux_classifier_weight` w > 0 (conditional only; AC-GAN, Odena et
al. 2017), D has a class head c(x) beside its score, and both losses gain a
cross-entropy: disc_loss += w CE(c(x), y) on real images with their labels,
gen_loss += w CE(c(G(z, y)), y) on fakes with the labels they were drawn for.
D's head learns the classes from real images only: trained on fakes too (the
original AC-GAN), it would also learn whatever marks G's classes apart, and G
could satisfy it with images no real-data classifier would label so.

One train step consumes `train.batch_size` real images: `model.disc_steps`
discriminator updates, each on its own 1/disc_steps share of the batch and as
many fresh fakes, then one generator update on that many fakes. G and D have
their own optimizers (`model.disc_learning_rate` for two time-scales, TTUR);
each update changes only its own network's parameters.

Sampling uses the generator's batch-norm running statistics (PyTorch's eval
mode), or, when `model.ema_decay > 0`, the EMA of its weights with batch-norm
statistics of those weights' own activations ("standing statistics", Brock et
al. 2019), recomputed at each sampling call from `model.standing_stats_batch`
fresh noise vectors: the running statistics belong to the live weights, and
an EMA generator normalized by them draws worse images.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from jaxgen import configlib, nets, optim
from jaxgen.data import DatasetSpec
from jaxgen.models import Batch, Family, Metrics
from jaxgen.nets.gan import GEN_CONDITIONING, NORMS, Discriminator, Generator

LOSSES = ("nonsaturating", "hinge", "wgan_gp")


@flax.struct.dataclass
class GANState:
  step: jax.Array
  params: Any        # {"generator": ..., "discriminator": ...}
  stats: Any         # non-trained variables: batch-norm statistics, spectral-norm u
  opt_state: Any     # {"generator": ..., "discriminator": ...}
  ema_params: Any    # EMA of the generator's params (= params when disabled)


def add_model_config(config: ConfigDict) -> None:
  """The `model` fields of a GAN config, at DCGAN's values."""
  m = config.model
  m.family = "gan"
  m.latent_dim = 100
  m.gen_widths = (128, 64)        # coarse to fine; 28x28: 2, 32x32: 3 entries
  m.disc_widths = (64, 128)       # fine to coarse
  m.gen_norm = "batch"            # batch | layer | none
  m.disc_norm = "batch"
  m.downsample = "space_to_depth"  # | "strided" (4x4 stride-2 convs)
  m.loss = "nonsaturating"        # | hinge | wgan_gp
  m.gp_weight = 10.0              # wgan_gp only
  m.spectral_norm = False         # in the discriminator
  m.disc_steps = 1                # discriminator updates per generator update
  m.disc_learning_rate = 0.0      # 0: optimizer.learning_rate (TTUR: differ)
  m.ema_decay = 0.0               # > 0: sample from an EMA of G's weights
  m.ema_start = 0                 # EMA copies the weights until this step
  # Noise vectors whose batch-norm statistics normalize the EMA generator when
  # sampling; 0: the live generator's running statistics (mismatched).
  m.standing_stats_batch = 1024
  m.conditional = False           # labels into G and D (projection)
  # > 0: AC-GAN's auxiliary class loss at this weight (module docstring).
  m.aux_classifier_weight = 0.0
  # How G takes the label: "concat" (to z) | "norm" (class-conditional gain and
  # bias in every norm layer of G: conditional batch norm).
  m.gen_conditioning = "concat"
  # G's and D's compute dtype ("float32" | "bfloat16": GPU/TPU tensor units);
  # params, optimizer state, norm statistics and losses stay float32.
  m.compute_dtype = "float32"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.999


def shrink_model_for_smoke(config: ConfigDict) -> None:
  m = config.model
  m.latent_dim = 16
  m.gen_widths = tuple(16 if i == 0 else 8 for i in range(len(m.gen_widths)))
  m.disc_widths = tuple(8 if i == 0 else 16 for i in range(len(m.disc_widths)))


def validate(config: ConfigDict) -> None:
  m = config.model
  configlib.require_positive(config, "model.latent_dim", "model.disc_steps")
  configlib.require_positive(config, "model.gp_weight", "model.disc_learning_rate",
                             "model.ema_start", "model.standing_stats_batch",
                             "model.aux_classifier_weight", allow_zero=True)
  configlib.require_one_of(config, "model.loss", LOSSES)
  configlib.require_one_of(config, "model.gen_norm", NORMS)
  configlib.require_one_of(config, "model.disc_norm", NORMS)
  configlib.require_one_of(config, "model.downsample", ("space_to_depth", "strided"))
  configlib.require_one_of(config, "model.compute_dtype", configlib.COMPUTE_DTYPES)
  configlib.require_one_of(config, "model.gen_conditioning", GEN_CONDITIONING)
  if m.gen_conditioning == "norm":
    configlib.require(
        config, "model.gen_conditioning", bool(m.conditional),
        "needs model.conditional=True: without labels G has nothing to "
        "condition its norm layers on (the setting would do nothing)")
    configlib.require(
        config, "model.gen_norm", m.gen_norm != "none",
        "must be 'batch' or 'layer' with model.gen_conditioning=norm: the label "
        "selects the gain and bias of G's norm layers")
  if m.aux_classifier_weight:
    configlib.require(
        config, "model.aux_classifier_weight", bool(m.conditional),
        "needs model.conditional=True: the auxiliary classifier learns the "
        "labels, and G must be told which label to draw")
  configlib.require(config, "model.ema_decay", 0.0 <= m.ema_decay < 1.0,
                    "must be in [0, 1): 0 disables the EMA, 0.999 is typical")
  configlib.require_widths(config, "model.gen_widths", "model.disc_widths")
  configlib.refuse_iwae(config, "a GAN has no likelihood to bound (its "
                        "eval.json scores samples)")
  if m.loss == "wgan_gp":
    configlib.require(
        config, "model.disc_norm", m.disc_norm != "batch",
        "must not be 'batch' with model.loss=wgan_gp: the gradient penalty is "
        "per image, and batch norm mixes images (use 'layer' or 'none')")
  configlib.require(
      config, "train.batch_size", config.train.batch_size % m.disc_steps == 0,
      f"must be divisible by model.disc_steps={m.disc_steps}: each "
      "discriminator update takes an equal share of the batch")
  configlib.require(
      config, "data.binarize", config.data.binarize == "none",
      "must be 'none' for a GAN: it models 8-bit intensities")


def to_tanh_range(images_u8: jax.Array) -> jax.Array:
  return images_u8.astype(jnp.float32) / 127.5 - 1.0


def disc_loss_terms(loss: str, real_B: jax.Array, fake_B: jax.Array) -> jax.Array:
  """Per-example discriminator loss from raw scores (without the GP term)."""
  if loss == "nonsaturating":
    return jax.nn.softplus(-real_B) + jax.nn.softplus(fake_B)
  if loss == "hinge":
    return jax.nn.relu(1.0 - real_B) + jax.nn.relu(1.0 + fake_B)
  return fake_B - real_B


def gen_loss_terms(loss: str, fake_B: jax.Array) -> jax.Array:
  if loss == "nonsaturating":
    return jax.nn.softplus(-fake_B)
  return -fake_B


def gradient_penalty(critic, real_BHWC: jax.Array, fake_BHWC: jax.Array,
                     key: jax.Array) -> jax.Array:
  """Per-example (|grad_x critic(x^)|_2 - 1)^2 at x^ = e real + (1 - e) fake
  (Gulrajani et al. 2017). `critic` maps a batch to scores [B]; images are
  independent under it (no batch norm), so the sum's gradient is per image."""
  e_B = jax.random.uniform(key, (real_BHWC.shape[0], 1, 1, 1))
  mixed = e_B * real_BHWC + (1.0 - e_B) * fake_BHWC
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(mixed)
  norm_B = jnp.sqrt(jnp.sum(jnp.square(grads), axis=(1, 2, 3)) + 1e-12)
  return jnp.square(norm_B - 1.0)


@dataclasses.dataclass(frozen=True)
class GANSteps:
  """The pieces of a GAN's train step, exposed for tests and research code.

  disc_update((params, stats, opt_state), (real, labels, key))
      -> ((params, stats, opt_state), metrics)   # changes D's params only
  gen_update(params, stats, opt_state, labels, key)
      -> (params, stats, opt_state, metrics)     # changes G's params only
  """
  init: Callable[[jax.Array, Batch], GANState]
  disc_update: Callable[..., Any]
  gen_update: Callable[..., Any]
  family: Family


def make(config: ConfigDict, spec: DatasetSpec) -> Family:
  return make_steps(config, spec).family


def make_steps(config: ConfigDict, spec: DatasetSpec) -> GANSteps:
  validate(config)
  m = config.model
  num_classes = spec.num_classes
  conditional = bool(m.conditional)
  aux_weight = float(m.aux_classifier_weight)
  dtype = nets.compute_dtype(m.compute_dtype)
  generator = Generator(image_shape=spec.image_shape, widths=tuple(m.gen_widths),
                        norm=m.gen_norm, conditioning=m.gen_conditioning, dtype=dtype)
  discriminator = Discriminator(widths=tuple(m.disc_widths), norm=m.disc_norm,
                                spectral_norm=bool(m.spectral_norm),
                                downsample=m.downsample,
                                num_classes=num_classes if conditional else 0,
                                aux_classes=num_classes if aux_weight else 0,
                                dtype=dtype)
  num_steps = config.train.num_steps
  gen_optimizer = optim.make_optimizer(config.optimizer, num_steps)
  disc_cfg = config.optimizer.copy_and_resolve_references()
  if m.disc_learning_rate:
    disc_cfg.learning_rate = m.disc_learning_rate
  # The D schedule counts D updates: disc_steps per train step.
  disc_optimizer = optim.make_optimizer(disc_cfg, num_steps * m.disc_steps)
  latent_dim, disc_steps, loss_name = m.latent_dim, m.disc_steps, m.loss
  ema_decay, ema_start = float(m.ema_decay), int(m.ema_start)
  standing_batch = int(m.standing_stats_batch) if ema_decay and m.gen_norm == "batch" else 0
  standing_generator = generator.clone(bn_momentum=0.0)

  def variables(state_part, stats_part):
    return {"params": state_part, **stats_part}

  def generate(params, stats, z_BL, labels_B, train):
    onehot = jax.nn.one_hot(labels_B, num_classes) if conditional else None
    if train:
      return generator.apply(variables(params, stats), z_BL, onehot, train=True,
                             mutable=list(stats))
    return generator.apply(variables(params, stats), z_BL, onehot, train=False), stats

  def score(params, stats, x_BHWC, labels_B):
    """(D's scores [B], its class logits [B, K] or None, its new stats)."""
    # D always runs in training mode: batch statistics of the batch it sees
    # (the DCGAN recipe) and one power iteration of spectral norm per call.
    out, stats = discriminator.apply(variables(params, stats), x_BHWC,
                                     labels_B if conditional else None, train=True,
                                     mutable=list(stats))
    score_B, class_logits_BK = out if aux_weight else (out, None)
    return score_B, class_logits_BK, stats

  def class_loss(class_logits_BK, labels_B):
    return optax.softmax_cross_entropy_with_integer_labels(class_logits_BK, labels_B)

  def class_correct(class_logits_BK, labels_B):
    return (jnp.argmax(class_logits_BK, -1) == labels_B).astype(jnp.float32)

  def split_variables(tree):
    params = tree["params"]
    return params, {k: v for k, v in tree.items() if k != "params"}

  def init(key: jax.Array, example_batch: Batch) -> GANState:
    del example_batch  # shapes come from the dataset spec
    g_key, d_key = jax.random.split(key)
    labels = jnp.zeros((2,), jnp.int32)
    onehot = jax.nn.one_hot(labels, num_classes) if conditional else None
    g_params, g_stats = split_variables(generator.init(
        g_key, jnp.zeros((2, latent_dim)), onehot, train=False))
    d_params, d_stats = split_variables(discriminator.init(
        d_key, jnp.zeros((2, *spec.image_shape)), labels if conditional else None,
        train=False))
    params = {"generator": g_params, "discriminator": d_params}
    return GANState(
        step=jnp.zeros((), jnp.int32), params=params,
        stats={"generator": g_stats, "discriminator": d_stats},
        opt_state={"generator": gen_optimizer.init(g_params),
                   "discriminator": disc_optimizer.init(d_params)},
        ema_params=g_params)

  def disc_update(carry, inputs):
    params, stats, opt_state = carry
    real_BHWC, labels_B, key = inputs
    z_key, gp_key = jax.random.split(key)
    z_BL = jax.random.normal(z_key, (real_BHWC.shape[0], latent_dim))
    fake_BHWC, g_stats = generate(params["generator"], stats["generator"], z_BL,
                                  labels_B, train=True)
    fake_BHWC = jax.lax.stop_gradient(fake_BHWC)

    def loss_fn(d_params):
      real_B, real_logits, d_stats = score(d_params, stats["discriminator"],
                                           real_BHWC, labels_B)
      fake_B, _, d_stats = score(d_params, d_stats, fake_BHWC, labels_B)
      per_example = disc_loss_terms(loss_name, real_B, fake_B)
      aux = {"d_real": real_B, "d_fake": fake_B}
      if aux_weight:
        class_B = class_loss(real_logits, labels_B)
        per_example = per_example + aux_weight * class_B
        aux["d_class_loss_real"] = class_B
        aux["d_class_acc_real"] = class_correct(real_logits, labels_B)
      if loss_name == "wgan_gp":
        critic = lambda x: score(d_params, d_stats, x, labels_B)[0]
        gp_B = gradient_penalty(critic, real_BHWC, fake_BHWC, gp_key)
        per_example = per_example + m.gp_weight * gp_B
        aux["gradient_penalty"] = gp_B
      return jnp.mean(per_example), (d_stats, aux)

    (d_loss, (d_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params["discriminator"])
    updates, d_opt = disc_optimizer.update(grads, opt_state["discriminator"],
                                           params["discriminator"])
    params = {**params, "discriminator": optax.apply_updates(
        params["discriminator"], updates)}
    # G's batch-norm statistics move only in G's own update.
    del g_stats
    stats = {**stats, "discriminator": d_stats}
    opt_state = {**opt_state, "discriminator": d_opt}
    metrics = {"disc_loss": d_loss, "disc_grad_norm": optax.global_norm(grads),
               **{k: jnp.mean(v) for k, v in aux.items()}}
    return (params, stats, opt_state), metrics

  def gen_update(params, stats, opt_state, labels_B, key):
    z_BL = jax.random.normal(key, (labels_B.shape[0], latent_dim))

    def loss_fn(g_params):
      fake_BHWC, g_stats = generate(g_params, stats["generator"], z_BL, labels_B,
                                    train=True)
      fake_B, fake_logits, d_stats = score(params["discriminator"],
                                           stats["discriminator"], fake_BHWC, labels_B)
      per_example = gen_loss_terms(loss_name, fake_B)
      aux = {}
      if aux_weight:
        class_B = class_loss(fake_logits, labels_B)
        per_example = per_example + aux_weight * class_B
        aux = {"g_class_loss_fake": jnp.mean(class_B),
               "d_class_acc_fake": jnp.mean(class_correct(fake_logits, labels_B))}
      return jnp.mean(per_example), (g_stats, d_stats, aux)

    (g_loss, (g_stats, d_stats, aux)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params["generator"])
    updates, g_opt = gen_optimizer.update(grads, opt_state["generator"],
                                          params["generator"])
    params = {**params, "generator": optax.apply_updates(params["generator"], updates)}
    # D's spectral-norm vectors may advance here too (as in the SNGAN code).
    stats = {"generator": g_stats, "discriminator": d_stats}
    opt_state = {**opt_state, "generator": g_opt}
    return params, stats, opt_state, {"gen_loss": g_loss,
                                      "gen_grad_norm": optax.global_norm(grads), **aux}

  def train_step(state: GANState, batch: Batch, key: jax.Array
                 ) -> tuple[GANState, Metrics]:
    real_BHWC = to_tanh_range(batch["image"])
    labels_B = batch["label"]
    share = real_BHWC.shape[0] // disc_steps
    d_keys = jax.random.split(jax.random.fold_in(key, 0), disc_steps)
    carry = (state.params, state.stats, state.opt_state)
    d_metrics = []
    for i in range(disc_steps):  # small and static: unrolled
      part = slice(i * share, (i + 1) * share)
      carry, metrics = disc_update(carry, (real_BHWC[part], labels_B[part], d_keys[i]))
      d_metrics.append(metrics)
    params, stats, opt_state = carry
    # G's labels: the last D share's labels (the data's class frequencies).
    params, stats, opt_state, g_metrics = gen_update(
        params, stats, opt_state, labels_B[-share:], jax.random.fold_in(key, 1))
    if ema_decay:
      decay = jnp.where(state.step < ema_start, 0.0, ema_decay)
      ema_params = optim.ema_update(state.ema_params, params["generator"], decay)
    else:
      ema_params = params["generator"]
    metrics = {k: jnp.mean(jnp.stack([d[k] for d in d_metrics])) for k in d_metrics[0]}
    metrics.update(g_metrics)
    if loss_name == "nonsaturating":  # D's probabilities, the classic D(x), D(G(z))
      metrics["d_real"] = jnp.mean(jnp.stack([jax.nn.sigmoid(d["d_real"])
                                              for d in d_metrics]))
      metrics["d_fake"] = jnp.mean(jnp.stack([jax.nn.sigmoid(d["d_fake"])
                                              for d in d_metrics]))
    return GANState(step=state.step + 1, params=params, stats=stats,
                    opt_state=opt_state, ema_params=ema_params), metrics

  def standing_stats(g_params, stats, key: jax.Array):
    """G's batch-norm statistics of its own activations on fresh noise (labels
    0, 1, ..., 9, 0, ... when conditional): a training-mode call at momentum 0
    stores exactly its batch's means and variances."""
    z_BL = jax.random.normal(key, (standing_batch, latent_dim))
    labels = jnp.arange(standing_batch) % num_classes if conditional else None
    onehot = jax.nn.one_hot(labels, num_classes) if conditional else None
    _, standing = standing_generator.apply(variables(g_params, stats), z_BL, onehot,
                                           train=True, mutable=list(stats))
    return standing

  def generate_images(state: GANState, z_BL: jax.Array, labels_B,
                      stats_key: jax.Array) -> jax.Array:
    # Reading the live weights when the EMA is off (they equal ema_params in a
    # run trained that way) lets `--config.model.ema_decay=0` sample and score
    # an EMA run's live generator from the same checkpoint.
    g_params = state.ema_params if ema_decay else state.params["generator"]
    stats = state.stats["generator"]
    if standing_batch:
      stats = standing_stats(g_params, stats, stats_key)
    x, _ = generate(g_params, stats, z_BL, labels_B, train=False)
    return (x + 1.0) / 2.0

  def sample(state: GANState, key: jax.Array, num: int, labels=None) -> jax.Array:
    """G(z) in [0, 1] for z ~ N(0, I); conditional: for `labels` (default
    0, 1, ..., 9, 0, ...)."""
    z_key, stats_key = jax.random.split(key) if standing_batch else (key, key)
    z_BL = jax.random.normal(z_key, (num, latent_dim))
    if conditional and labels is None:
      labels = jnp.arange(num) % num_classes
    return generate_images(state, z_BL, labels, stats_key)

  def evaluate(state: GANState, batch: Batch, key: jax.Array) -> Metrics:
    """D's raw score of each real test image; far above its score on training
    images = D has memorized the training set."""
    del key
    scores, class_logits, _ = score(state.params["discriminator"],
                                    state.stats["discriminator"],
                                    to_tanh_range(batch["image"]), batch["label"])
    if aux_weight:  # D's class head as a classifier of held-out images
      return {"disc_score_test": scores,
              "disc_class_acc_test": class_correct(class_logits, batch["label"])}
    return {"disc_score_test": scores}

  def views(state: GANState, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
    """Latent interpolations: rows of 10 images along a straight line between
    two noise vectors (conditional: one class per row)."""
    rows, cols = 8, 10
    # start/end as before standing statistics, so published grids reproduce.
    start_key, end_key = jax.random.split(key)
    stats_key = jax.random.fold_in(key, 1)
    start = jax.random.normal(start_key, (rows, latent_dim))
    end = jax.random.normal(end_key, (rows, latent_dim))
    t_T = jnp.linspace(0.0, 1.0, cols)
    z = start[:, None] + t_T[None, :, None] * (end - start)[:, None]
    labels = jnp.repeat(jnp.arange(rows) % num_classes, cols) if conditional else None
    images = generate_images(state, z.reshape(rows * cols, latent_dim), labels,
                             stats_key)
    del batch
    return {"interpolations": images.reshape(rows, cols, *spec.image_shape)}

  protocol = {
      "metric": ("disc_score_test: the discriminator's raw score of each real "
                 "test image (a diagnostic; a GAN has no likelihood). Sample "
                 "quality is in sample_metrics."
                 + (" disc_class_acc_test: how often D's class head names each "
                    "test image's label." if aux_weight else "")),
      "loss": loss_name + (" + %g x auxiliary class cross-entropy (AC-GAN)" % aux_weight
                           if aux_weight else ""),
      "sampling": ("EMA generator weights (decay %g)" % ema_decay if ema_decay
                   else "the generator's weights") + (
                       ", batch-norm statistics of %d fresh noise vectors per "
                       "sampling call (standing statistics)" % standing_batch
                       if standing_batch else ", batch-norm running statistics"),
  }
  family = Family(name="gan", init=init, train_step=train_step, sample=sample,
                  evaluate=evaluate, views=views, loss_key="disc_loss",
                  eval_protocol=protocol, conditional=conditional,
                  curve_groups=(("disc_loss", "gen_loss"), ("d_real", "d_fake"),
                                ("disc_grad_norm", "gen_grad_norm"))
                  + ((("d_class_acc_real", "d_class_acc_fake"),) if aux_weight else ()))
  return GANSteps(init=init, disc_update=disc_update, gen_update=gen_update,
                  family=family)
