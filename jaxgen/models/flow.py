"""Normalizing flows (RealNVP, Glow): exact likelihoods of dequantized images.

An 8-bit image x in {0..255}^D gets uniform noise, v = x + n, n ~ U[0, 1)^D,
and is scaled to u = v / 256 in [0, 1)^D, then mapped to the flow's input y
by `model.preprocess`:

    "logit": y = logit(a + (1 - 2a) u)       (RealNVP; a = model.logit_alpha)
    "shift": y = u - 0.5                      (Glow)

and the flow (jaxgen/nets/flow.py) maps y to eps ~ N(0, I). By the change of
variables, per image,

    nll_nats = -log N(eps; 0, I) - logdet_flow - logdet_preprocess + D log 256

is -log p(v), the density of the dequantized image, and its expectation over
the noise bounds the discrete NLL: E_n[-log p(x + n)] >= -log P(x) (Theis et
al. 2016). Evaluating without the noise (or without the D log 256) gives
numbers that are not a bound on anything; jaxgen never does. nll_bpd is the
same in bits per dimension, nll_nats / (D ln 2). With eval.iwae_samples = k,
evaluation also reports iwae<k>_nats = -log (1/k) sum_j p(x + n_j), the
importance-weighted bound with the noise as the latent: tighter, and still a
bound.

With model.dequantization = "variational" the noise is drawn from q(n | x), a
small conditional flow trained with the model (Ho et al. 2019), and every
number above becomes -log p(x + n) + log q(n | x): still a bound on the
discrete NLL for any q, and a tighter one as q learns where in each pixel's
bin the flow puts its density (uniform noise is the case log q = 0).

Sampling draws eps ~ N(0, T^2 I) at temperature T = `model.temperature`
(1.0: the model's own distribution; Glow's pictures use T = 0.7) and inverts
the flow and the preprocessing.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxgen import configlib, data, nets, optim
from jaxgen.data import DatasetSpec
from jaxgen.likelihoods import nats_to_bits_per_dim
from jaxgen.models import Batch, Family, Metrics
from jaxgen.nets.flow import MultiScaleFlow, VariationalDequantizer

ARCHITECTURES = ("glow", "realnvp")
PREPROCESSING = ("logit", "shift")
DEQUANTIZATION = ("uniform", "variational")
# Temperatures of the sample grid among the views.
VIEW_TEMPERATURES = (0.0, 0.5, 0.7, 1.0)


@flax.struct.dataclass
class FlowState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any    # EMA of params (= params when model.ema_decay = 0)


def add_model_config(config: ConfigDict, architecture: str) -> None:
  """The `model` fields of a flow config, at their defaults."""
  m = config.model
  m.family = "flow"
  m.architecture = architecture   # glow | realnvp
  m.num_levels = 2                # squeeze-and-split levels (28x28: at most 2)
  m.steps_per_level = 8           # flow steps (glow) / couplings per half level
  m.width = 128                   # channels of each coupling's network
  m.lu = True                     # glow: LU-decomposed 1x1 convolutions
  # glow: each level's steps as one lax.scan over stacked parameters: the same
  # function, compiled once per level instead of once per step (deep flows
  # compile in seconds, not minutes); another checkpoint layout.
  m.scan_steps = False
  m.preprocess = "logit" if architecture == "realnvp" else "shift"
  m.logit_alpha = 0.05
  # uniform: n ~ U[0, 1)^D. variational: n ~ q(n | x), a small conditional
  # flow trained with the model (jaxgen/nets/flow.py VariationalDequantizer).
  m.dequantization = "uniform"
  m.dequant_steps = 4             # variational: flow steps of q(n | x)
  m.dequant_width = 32            # variational: channels of its networks
  m.temperature = 1.0             # of sample(); views show a grid of them
  m.compute_dtype = "float32"     # of the coupling networks (bfloat16: GPU/TPU)
  # > 0: evaluation, sampling and views use an exponential moving average of
  # the weights (Polyak averaging), which pays off in runs that end at a high
  # learning rate (a constant rate, a wall-clock stop).
  m.ema_decay = 0.0
  # Training augmentation: each image mirrored left-right with probability
  # 1/2 (CIFAR-10's mirror images are CIFAR-10 images; fewer passes over the
  # same pixels for a large flow on a small training set).
  m.flip = False


def flow_config(dataset: str, architecture: str, options: set[str]) -> ConfigDict:
  """A whole flow config: data, model at its defaults, optimizer and schedule
  (Adam with warm-up and cosine decay, clipped gradients: flows take large
  steps early); configs/<architecture>_<dataset>.py then size the model."""
  config = configlib.base_config()
  config.data.name = dataset
  config.data.binarize = "none"
  add_model_config(config, architecture)
  config.model.num_levels = 2 if dataset == "mnist" else 3

  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.final_lr_fraction = 0.05
  config.optimizer.warmup_steps = 200
  config.optimizer.grad_clip_norm = 50.0

  config.train.batch_size = 64
  config.train.num_steps = 10_000
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.snapshot_every = 1_000
  config.eval.batch_size = 500
  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    shrink_model_for_smoke(config)
  return config


def shrink_model_for_smoke(config: ConfigDict) -> None:
  m = config.model
  m.steps_per_level = 2
  m.width = 16
  m.dequant_steps = 2
  m.dequant_width = 8


def validate(config: ConfigDict, spec: DatasetSpec) -> None:
  m = config.model
  configlib.require_one_of(config, "model.architecture", ARCHITECTURES)
  configlib.require_one_of(config, "model.preprocess", PREPROCESSING)
  configlib.require_one_of(config, "model.dequantization", DEQUANTIZATION)
  configlib.require_one_of(config, "model.compute_dtype", configlib.COMPUTE_DTYPES)
  configlib.require_positive(config, "model.num_levels", "model.steps_per_level",
                             "model.width", "model.dequant_steps",
                             "model.dequant_width")
  configlib.require_positive(config, "model.temperature", allow_zero=True)
  configlib.require(config, "model.scan_steps",
                    not m.scan_steps or m.architecture == "glow",
                    "is for glow (its steps are alike); realnvp alternates "
                    "its masks, so set it to False")
  configlib.require(config, "model.ema_decay", 0.0 <= m.ema_decay < 1.0,
                    "must be in [0, 1): 0 evaluates the trained weights")
  configlib.require(config, "model.logit_alpha", 0.0 < m.logit_alpha < 0.5,
                    "must be in (0, 0.5): y = logit(a + (1 - 2a) u), and a = 0 "
                    "sends a black pixel to -inf")
  configlib.require(
      config, "data.binarize", config.data.binarize == "none",
      "must be 'none' for a flow: it models the 8-bit pixels (dequantized), "
      "not binarized ones")
  height, width = spec.image_shape[:2]
  squeezes = m.num_levels - (1 if m.architecture == "realnvp" else 0)
  configlib.require(
      config, "model.num_levels",
      height % 2 ** squeezes == 0 and width % 2 ** squeezes == 0,
      f"squeezes a {height}x{width} image {squeezes} times, which does not "
      "divide it; use fewer levels (MNIST: at most 2 for glow, 3 for realnvp)")


def into_bins(images_u8: jax.Array, noise_BHWC: jax.Array) -> jax.Array:
  """u = (x + n) / 256: each 8-bit value x moved by its noise n in [0, 1)
  within its bin, scaled to [0, 1)."""
  return (images_u8.astype(jnp.float32) + noise_BHWC) / 256.0


def dequantize(key: jax.Array, images_u8: jax.Array) -> jax.Array:
  """Uniform dequantization: (x + n) / 256, n ~ U[0, 1) per pixel."""
  return into_bins(images_u8, jax.random.uniform(key, images_u8.shape))


def preprocess_pixels(u_BHWC: jax.Array, logit_alpha: float | None
                      ) -> tuple[jax.Array, jax.Array]:
  """u in [0, 1) -> (y, log |det dy/du| per image): logit(a + (1 - 2a) u) with
  a = logit_alpha, or u - 0.5 when logit_alpha is None."""
  if logit_alpha is None:
    return u_BHWC - 0.5, jnp.zeros(u_BHWC.shape[:1])
  a = logit_alpha
  s = a + (1.0 - 2.0 * a) * u_BHWC
  y = jnp.log(s) - jnp.log1p(-s)
  logdet = jnp.sum(math.log(1.0 - 2.0 * a) - jnp.log(s) - jnp.log1p(-s),
                   axis=(1, 2, 3))
  return y, logdet


def postprocess_pixels(y_BHWC: jax.Array, logit_alpha: float | None) -> jax.Array:
  """Inverse of preprocess_pixels, clipped to the image range [0, 1]."""
  if logit_alpha is None:
    u = y_BHWC + 0.5
  else:
    u = (jax.nn.sigmoid(y_BHWC) - logit_alpha) / (1.0 - 2.0 * logit_alpha)
  return jnp.clip(u, 0.0, 1.0)


def make(config: ConfigDict, spec: DatasetSpec) -> Family:
  validate(config, spec)
  m = config.model
  flow = MultiScaleFlow(image_shape=tuple(spec.image_shape),
                        architecture=m.architecture, num_levels=m.num_levels,
                        steps_per_level=m.steps_per_level, width=m.width,
                        lu=bool(m.lu), dtype=nets.compute_dtype(m.compute_dtype),
                        scan_steps=bool(m.scan_steps))
  variational = m.dequantization == "variational"
  dequantizer = VariationalDequantizer(
      steps=m.dequant_steps, width=m.dequant_width, lu=bool(m.lu),
      dtype=nets.compute_dtype(m.compute_dtype))
  num_dims = math.prod(spec.image_shape)
  optimizer = optim.make_optimizer(config.optimizer, config.train.num_steps)
  logit = m.preprocess == "logit"
  alpha = float(m.logit_alpha) if logit else None
  temperature = float(m.temperature)
  ema_decay = float(m.ema_decay)
  flip = bool(m.flip)
  preprocess = lambda u: preprocess_pixels(u, alpha)
  postprocess = lambda y: postprocess_pixels(y, alpha)

  # Params: the flow's variables; with variational dequantization
  # {"flow": ..., "dequantizer": ...} (a uniform run's checkpoints keep the
  # layout they always had).
  flow_params = lambda params: params["flow"] if variational else params

  def nll_nats(params, u_BHWC: jax.Array) -> jax.Array:
    """-log p(v) per image, v = 256 u the dequantized 8-bit image."""
    y, logdet_pre = preprocess(u_BHWC)
    eps_BD, logdet_flow = flow.apply(flow_params(params), y, method=flow.forward)
    log_normal = -0.5 * jnp.sum(eps_BD ** 2 + math.log(2 * math.pi), -1)
    return -(log_normal + logdet_flow + logdet_pre) + num_dims * math.log(256.0)

  def base_noise(key: jax.Array, shape) -> jax.Array:
    """The noise a dequantization starts from: the uniform n itself, or the
    variational dequantizer's eps."""
    if variational:
      return jax.random.normal(key, shape)
    return jax.random.uniform(key, shape)

  def dequantizer_input(images_u8):
    return images_u8.astype(jnp.float32) / 255.0 - 0.5

  def dequantize_with(params, base_BHWC, images_u8):
    """(u = (x + n) / 256, log q(n | x) per image) from base_noise's draw."""
    if not variational:
      return into_bins(images_u8, base_BHWC), jnp.zeros(images_u8.shape[:1])
    noise, log_q = dequantizer.apply(params["dequantizer"],
                                     dequantizer_input(images_u8), base_BHWC)
    return into_bins(images_u8, noise), log_q

  def bound_nats(params, base_BHWC, images_u8):
    """(u, -log p(x + n) + log q(n | x)) per image: the one-draw bound on
    -log P(x) (log q = 0 for uniform noise)."""
    u_BHWC, log_q = dequantize_with(params, base_BHWC, images_u8)
    return u_BHWC, nll_nats(params, u_BHWC) + log_q

  def encode_eps(params, u_BHWC):
    return flow.apply(flow_params(params), preprocess(u_BHWC)[0],
                      method=flow.forward)[0]

  def decode_eps(params, eps_BD):
    return postprocess(flow.apply(flow_params(params), eps_BD, method=flow.inverse))

  def init(key: jax.Array, example_batch: Batch) -> FlowState:
    # ActNorm initialises from this batch, dequantized (by the dequantizer as
    # initialised) and preprocessed.
    noise_key, param_key, dequantizer_key = jax.random.split(key, 3)
    images = example_batch["image"]
    base = base_noise(noise_key, images.shape)
    params = {}
    if variational:
      params["dequantizer"] = dequantizer.init(
          dequantizer_key, dequantizer_input(images), base)
    y, _ = preprocess(dequantize_with(params, base, images)[0])
    flow_vars = flow.init(param_key, y, method=flow.forward)
    params = params | {"flow": flow_vars} if variational else flow_vars
    return FlowState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params), ema_params=params)

  def train_step(state: FlowState, batch: Batch, key: jax.Array
                 ) -> tuple[FlowState, Metrics]:
    # Drawn with the global batch shape, so 1 or N devices see the same noise.
    base_BHWC = base_noise(key, batch["image"].shape)
    images = batch["image"]
    if flip:   # its own key: the noise stays what it is without flips
      images = data.augment(jax.random.fold_in(key, 1), images, 0, True)

    def loss_fn(params):
      nats = bound_nats(params, base_BHWC, images)[1]
      bpd = jnp.mean(nats_to_bits_per_dim(nats, num_dims))
      return bpd, {"nll_nats": jnp.mean(nats), "nll_bpd": bpd}

    state, metrics = optim.gradient_step(state, optimizer, loss_fn)
    if not ema_decay:
      return state.replace(ema_params=state.params), metrics
    decay = optim.warmed_up_ema_decay(ema_decay, state.step)
    return state.replace(
        ema_params=optim.ema_update(state.ema_params, state.params, decay)), metrics

  def eval_params(state: FlowState):
    """The EMA when it is on. Reading the live weights when it is off (equal to
    ema_params in a run trained that way) lets `--config.model.ema_decay=0`
    evaluate an EMA run's own weights."""
    return state.ema_params if ema_decay else state.params

  iwae_samples = int(config.eval.get("iwae_samples", 0))

  def one_draw(params, batch, key):
    """(u_BHWC, nll_nats_B) of one dequantization draw per test image, from
    its index: the numbers do not depend on the batch size or the number of
    devices."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"])
    image_shape = batch["image"].shape[1:]
    base_BHWC = jax.vmap(lambda k: base_noise(k, image_shape))(keys)
    return bound_nats(params, base_BHWC, batch["image"])

  def iwae_nats(params, batch, key, first_draw_nats_B):
    """-log (1/k) sum_j p(x + n_j) / q(n_j | x), n_j ~ q: the importance-
    weighted bound (Burda et al. 2016) with the dequantization noise as the
    latent (for uniform noise q = 1 and the weights are the densities
    themselves). For the same draws it is never above their mean one-draw
    bound (Jensen) and it tends to -log P(x) as k grows. Draw 0 is the
    one-draw metric's own noise, draw j >= 1 that of evaluating with the key
    fold_in(key, j); draws 1..k-1 run one at a time under lax.map, so memory
    does not grow with k."""
    def draw_nats(j):
      return one_draw(params, batch, jax.random.fold_in(key, j))[1]
    nats_KB = first_draw_nats_B[None]
    if iwae_samples > 1:
      more_KB = jax.lax.map(draw_nats, jnp.arange(1, iwae_samples))
      nats_KB = jnp.concatenate([nats_KB, more_KB])
    return -(jax.nn.logsumexp(-nats_KB, 0) - math.log(iwae_samples))

  def evaluate(state: FlowState, batch: Batch, key: jax.Array) -> Metrics:
    params = eval_params(state)
    u_BHWC, nats = one_draw(params, batch, key)
    metrics = {"nll_nats": nats, "nll_bpd": nats_to_bits_per_dim(nats, num_dims)}
    if iwae_samples:
      iw_nats = iwae_nats(params, batch, key, nats)
      metrics[f"iwae{iwae_samples}_nats"] = iw_nats
      metrics[f"iwae{iwae_samples}_bpd"] = nats_to_bits_per_dim(iw_nats, num_dims)
    # x -> eps -> x: how exactly the inverse undoes the forward pass, in [0, 1]
    # pixel units (a flow that is not invertible in float32 shows here).
    # A non-finite reconstruction (the inverse overflowing in float32) counts
    # as the largest possible error, 1; XLA's max would otherwise skip NaNs.
    recon = decode_eps(params, encode_eps(params, u_BHWC))
    error = jnp.where(jnp.isfinite(recon), jnp.abs(recon - u_BHWC), 1.0)
    error_B = jnp.max(error, axis=(1, 2, 3))
    return metrics | {"inverse_max_abs_error": error_B,
                      "inverse_failed": (error_B > 1e-3).astype(jnp.float32)}

  def sample(state: FlowState, key: jax.Array, num: int, labels=None) -> jax.Array:
    del labels  # unconditional
    return sample_at(eval_params(state), key, num, temperature)

  def sample_at(params, key, num, t):
    return decode_eps(params, t * jax.random.normal(key, (num, num_dims)))

  def views(state: FlowState, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
    """Grids as [rows, cols, H, W, C]: samples at temperatures 0, 0.5, 0.7 and
    1.0 (one row each, the same noise scaled), interpolations between test
    images along the straight line between their eps, and reconstructions
    x -> eps -> x (input beside its reconstruction)."""
    params = eval_params(state)
    noise_key, dequant_key = jax.random.split(key)
    cols = 8
    eps_ND = jax.random.normal(noise_key, (cols, num_dims))
    rows = [decode_eps(params, t * eps_ND) for t in VIEW_TEMPERATURES]
    out = {"temperatures": jnp.stack(rows, 0)}
    images = batch["image"]
    u_BHWC = dequantize_with(params, base_noise(dequant_key, images.shape),
                             images)[0]
    eps_BD = encode_eps(params, u_BHWC)
    b = u_BHWC.shape[0]
    pairs = max(1, min(8, b // 2))
    t_T = jnp.linspace(0.0, 1.0, 8)
    start, end = eps_BD[:pairs], eps_BD[b // 2:b // 2 + pairs]
    path_PTD = start[:, None] + t_T[None, :, None] * (end - start)[:, None]
    path = decode_eps(params, path_PTD.reshape(-1, num_dims))
    out["interpolations"] = path.reshape(pairs, len(t_T), *u_BHWC.shape[1:])
    recon = decode_eps(params, eps_BD)
    pairs_B2 = jnp.stack([u_BHWC, recon], 1)
    out["reconstructions"] = (pairs_B2.reshape(-1, 8, *u_BHWC.shape[1:])
                              if b % 4 == 0 else pairs_B2)
    return out

  noise = ("n ~ q(n | x), the trained variational dequantizer "
           f"({m.dequant_steps} steps, width {m.dequant_width})"
           if variational else "n ~ U[0,1)^D")
  protocol = {
      "metric": ("nll_nats: -log p(x + n) + log q(n | x) of the dequantized "
                 f"image, {noise}, one noise draw per test image (its "
                 "expectation bounds the discrete NLL; log q = 0 for uniform "
                 "noise); nll_bpd: the same in bits per dimension, nats / (D ln 2)"),
      "data": f"8-bit pixels x dequantized as (x + n) / 256, {noise}",
      "preprocess": (f"logit(a + (1 - 2a) u), a = {alpha}, log-determinant "
                     "included" if logit else "u - 0.5"),
      "flow": (f"{m.architecture}: {m.num_levels} levels x {m.steps_per_level} "
               f"steps, coupling width {m.width}"),
      "sample_temperature": temperature,
      "training_augmentation": ("random left-right mirroring" if flip
                                else "none"),
      "weights": (f"EMA of the weights (decay {ema_decay:g})" if ema_decay
                  else "the trained weights"),
  }
  if iwae_samples:
    protocol["iwae"] = (f"iwae{iwae_samples}_nats: -log of the mean of "
                        f"p(x + n_j) / q(n_j | x) over k={iwae_samples} "
                        "dequantizations x + n_j of each test "
                        "image (the first is nll_nats's), the importance-weighted "
                        "bound with the dequantization noise as its proposal; tighter "
                        "than nll_nats, -> -log P(x) as k grows")
  return Family(name="flow", init=init, train_step=train_step, sample=sample,
                evaluate=evaluate, views=views, loss_key="loss",
                eval_protocol=protocol)
