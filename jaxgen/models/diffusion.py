"""Diffusion (DDPM, Ho et al. 2020): training, DDPM and DDIM sampling, the bound.

Images are 8-bit pixels scaled to x0 in [-1, 1]. The forward process over
t = 0..T-1 (the paper's 1..T) has noise levels beta_t from `model.schedule`
("linear": the paper's 1e-4..0.02 for T = 1000, rescaled by 1000/T for other
T; "cosine": Nichol & Dhariwal 2021) and the closed form

    q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I),  abar_t = prod_{s<=t} (1 - beta_s).

The U-Net (jaxgen/nets/unet.py) predicts `model.objective`: the noise
("eps"), x0 ("x0") or v = sqrt(abar) eps - sqrt(1 - abar) x0 ("v"); the loss
is the mean squared error of that target at a uniform t (the paper's L_simple).
Sampling uses an EMA of the weights (decay `model.ema_decay`, warmed up as
min(decay, (1 + step) / (10 + step))).

Samplers: ancestral DDPM (all T steps, p(x_{t-1} | x_t) = N(posterior mean
at the predicted x0, sigma_t^2), sigma_t^2 = the posterior variance ("small")
or beta_t ("large")), and DDIM (Song et al. 2021) over any number of evenly
spaced steps with its eta (0: deterministic; 1 over all steps: DDPM with
"small" variance). The predicted x0 is clipped to [-1, 1] in both.

Class-conditional models (`model.conditional`) train with the label replaced by
"no label" with probability `model.label_dropout`, and sample with
classifier-free guidance: eps = (1 + w) eps(x, y) - w eps(x, none),
w = `model.guidance_scale` (Ho & Salimans 2021).

The bound (evaluate): -log p(x0) <= L_T + sum_{t>=1} L_t + L_0, with
L_T = KL(q(x_T | x0) || N(0, I)), L_t = KL(q(x_{t-1} | x_t, x0) ||
p(x_{t-1} | x_t)) and L_0 = -log p(x0 | x_1) under a Gaussian discretized to
the 256 pixel values, so the bound is on the discrete data's NLL (no
dequantization needed). Summing all T terms costs T network passes per image;
`model.bound_timesteps` = K < T estimates the sum without bias from K
timesteps per image, one drawn uniformly from each of K equal strata
(T/K * sum of K terms); the reported standard error then includes that
sampling noise. K = 0 sums all T terms exactly.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxgen import configlib, nets, optim
from jaxgen.data import DatasetSpec
from jaxgen.likelihoods import discretized_gaussian_log_probs, nats_to_bits_per_dim
from jaxgen.models import Batch, Family, Metrics
from jaxgen.nets.unet import UNet

SCHEDULES = ("linear", "cosine")
OBJECTIVES = ("eps", "x0", "v")
SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("small", "large")
# Step counts of the views' side-by-side row of samples (DDIM, eta = 0).
VIEW_STEP_COUNTS = (10, 50, 250, 1000)
# Columns of the denoising-trajectory view (x_T ... x_0).
TRAJECTORY_FRAMES = 10


@flax.struct.dataclass
class DiffusionState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any


def add_model_config(config: ConfigDict) -> None:
  """The `model` fields of a diffusion config, at their defaults."""
  m = config.model
  m.family = "diffusion"
  m.base_width = 64
  m.width_multipliers = (1, 2, 2)
  m.blocks_per_level = 2
  m.attention_resolutions = (16,)
  m.dropout = 0.1
  m.patch_size = 1                # > 1: the U-Net runs on folded patches
  m.num_timesteps = 1000
  m.schedule = "linear"           # linear | cosine
  m.objective = "eps"             # eps | x0 | v
  m.variance = "small"            # sigma_t^2: posterior variance | beta_t
  m.ema_decay = 0.9999
  m.sampler = "ddim"              # of sample() and the eval metrics
  m.sample_steps = 50             # DDIM steps (ddpm always takes T)
  m.ddim_eta = 0.0
  m.conditional = False
  m.label_dropout = 0.1           # classifier-free guidance training
  m.guidance_scale = 0.0
  m.bound_timesteps = 10          # eval: K stratified timesteps; 0 = all T
  # The U-Net's compute dtype ("float32" | "bfloat16": GPU/TPU tensor units);
  # params, optimizer state and loss stay float32.
  m.compute_dtype = "float32"


def diffusion_config(dataset: str, options: set[str]) -> ConfigDict:
  """A whole diffusion config: data, model at its defaults, Adam with warm-up
  and gradient clipping (the paper's recipe); configs/ddpm_<dataset>.py size it."""
  config = configlib.base_config()
  config.data.name = dataset
  config.data.binarize = "none"
  add_model_config(config)
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 500
  config.optimizer.grad_clip_norm = 1.0
  config.train.batch_size = 128
  config.train.num_steps = 100_000
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.snapshot_every = 5_000
  # Each monitor sample costs sample_steps network passes.
  config.train.monitor_samples = 500
  config.eval.batch_size = 500
  if configlib.SMOKE in options:
    configlib.shrink_for_smoke(config)
    shrink_model_for_smoke(config)
  return config


def shrink_model_for_smoke(config: ConfigDict) -> None:
  m = config.model
  m.base_width = 16
  m.width_multipliers = (1, 2)
  m.blocks_per_level = 1
  m.attention_resolutions = ()
  m.num_timesteps = 20
  m.sample_steps = 5
  m.bound_timesteps = 4
  m.ema_decay = 0.99
  config.train.monitor_samples = 0
  config.eval.num_samples = 200


def validate(config: ConfigDict, spec: DatasetSpec) -> None:
  m = config.model
  configlib.require_one_of(config, "model.schedule", SCHEDULES)
  configlib.require_one_of(config, "model.objective", OBJECTIVES)
  configlib.require_one_of(config, "model.sampler", SAMPLERS)
  configlib.require_one_of(config, "model.variance", VARIANCES)
  configlib.require_one_of(config, "model.compute_dtype", configlib.COMPUTE_DTYPES)
  configlib.require_widths(config, "model.width_multipliers")
  configlib.refuse_iwae(config, "diffusion's bound is the one-draw variational "
                        "bound (model.bound_timesteps sets its estimate); no "
                        "importance-weighted version is built")
  configlib.require_positive(config, "model.base_width", "model.blocks_per_level",
                             "model.num_timesteps", "model.sample_steps",
                             "model.patch_size")
  configlib.require_positive(config, "model.dropout", "model.guidance_scale",
                             "model.bound_timesteps", allow_zero=True)
  configlib.require(config, "model.ema_decay", 0.0 <= m.ema_decay < 1.0,
                    "must be in [0, 1): 0 samples from the trained weights")
  configlib.require(config, "model.ddim_eta", 0.0 <= m.ddim_eta <= 1.0,
                    "must be in [0, 1] (0: deterministic DDIM)")
  configlib.require(config, "model.label_dropout", 0.0 <= m.label_dropout < 1.0,
                    "must be in [0, 1)")
  configlib.require(config, "model.sample_steps", m.sample_steps <= m.num_timesteps,
                    f"must be at most model.num_timesteps={m.num_timesteps}")
  configlib.require(
      config, "model.bound_timesteps",
      m.bound_timesteps == 0 or (m.bound_timesteps <= m.num_timesteps
                                 and m.num_timesteps % m.bound_timesteps == 0),
      f"must divide model.num_timesteps={m.num_timesteps} (equal strata), or "
      "be 0 for the exact sum over all timesteps")
  configlib.require(config, "model.guidance_scale",
                    m.guidance_scale == 0 or m.conditional,
                    "guidance needs a class-conditional model "
                    "(--config.model.conditional=True)")
  configlib.require(
      config, "data.binarize", config.data.binarize == "none",
      "must be 'none' for diffusion: it models the 8-bit pixels")
  height = spec.image_shape[0] // m.patch_size
  downsamples = len(m.width_multipliers) - 1
  configlib.require(
      config, "model.width_multipliers",
      spec.image_shape[0] % m.patch_size == 0 and height % 2 ** downsamples == 0,
      f"gives {downsamples} halvings of a {height}x{height} input (image "
      f"{spec.image_shape[0]} / patch {m.patch_size}), which does not divide it; "
      "use fewer levels")


def noise_schedule(name: str, num_timesteps: int) -> np.ndarray:
  """beta_t for t = 0..T-1, float64."""
  t = num_timesteps
  if name == "linear":
    scale = 1000.0 / t
    # Clipped like the cosine schedule: beta = 1 would make abar_T exactly 0
    # and x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) undefined.
    return np.clip(np.linspace(scale * 1e-4, scale * 0.02, t, dtype=np.float64),
                   0.0, 0.999)
  steps = np.arange(t + 1, dtype=np.float64) / t
  alpha_bar = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


@flax.struct.dataclass
class Schedule:
  """Per-timestep constants of the forward process and its posterior [T]."""
  betas: jax.Array
  alpha_bar: jax.Array
  alpha_bar_prev: jax.Array            # abar_{t-1}, 1 at t = 0
  posterior_variance: jax.Array        # beta~_t (0 at t = 0)
  posterior_log_variance: jax.Array    # log beta~_t, t = 0 clipped to beta~_1
  posterior_mean_x0: jax.Array         # coefficients of the posterior mean
  posterior_mean_xt: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def make_schedule(betas: np.ndarray) -> Schedule:
  betas = np.asarray(betas, np.float64)
  alphas = 1.0 - betas
  alpha_bar = np.cumprod(alphas)
  alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
  posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
  clipped = np.append(posterior_variance[1] if len(betas) > 1 else betas[0],
                      posterior_variance[1:])
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(
      betas=f32(betas), alpha_bar=f32(alpha_bar), alpha_bar_prev=f32(alpha_bar_prev),
      posterior_variance=f32(posterior_variance),
      posterior_log_variance=f32(np.log(clipped)),
      posterior_mean_x0=f32(betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)),
      posterior_mean_xt=f32((1.0 - alpha_bar_prev) * np.sqrt(alphas)
                            / (1.0 - alpha_bar)))


def _at(values_T: jax.Array, t_B: jax.Array) -> jax.Array:
  """values[t] shaped to broadcast against [B, H, W, C]."""
  return values_T[t_B][:, None, None, None]


def q_sample(sched: Schedule, x0: jax.Array, t_B: jax.Array, noise: jax.Array
             ) -> jax.Array:
  """A draw of x_t ~ q(x_t | x0) with the given standard normal noise."""
  abar = _at(sched.alpha_bar, t_B)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def q_posterior(sched: Schedule, x0: jax.Array, x_t: jax.Array, t_B: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of q(x_{t-1} | x_t, x0)."""
  mean = _at(sched.posterior_mean_x0, t_B) * x0 + _at(sched.posterior_mean_xt, t_B) * x_t
  return mean, _at(sched.posterior_variance, t_B)


def target(objective: str, sched: Schedule, x0, t_B, noise) -> jax.Array:
  """What the network learns to output at (x_t, t)."""
  if objective == "eps":
    return noise
  if objective == "x0":
    return x0
  abar = _at(sched.alpha_bar, t_B)
  return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def eps_and_x0(objective: str, sched: Schedule, out, x_t, t_B
               ) -> tuple[jax.Array, jax.Array]:
  """The noise and x0 that the network's output implies at (x_t, t)."""
  abar = _at(sched.alpha_bar, t_B)
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if objective == "eps":
    return out, (x_t - s * out) / a
  if objective == "x0":
    return (x_t - a * out) / s, out
  return s * x_t + a * out, a * x_t - s * out


def clip_x0(sched: Schedule, x0, x_t, t_B) -> tuple[jax.Array, jax.Array]:
  """x0 clipped to the data range [-1, 1], and the noise consistent with it."""
  x0 = jnp.clip(x0, -1.0, 1.0)
  abar = _at(sched.alpha_bar, t_B)
  return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar), x0


def step_variance(sched: Schedule, variance: str, t_B) -> tuple[jax.Array, jax.Array]:
  """sigma_t^2 of p(x_{t-1} | x_t) and its log: the posterior variance
  ("small"; at t = 0 the log is clipped to beta~_1's) or beta_t ("large";
  beta~_1 at t = 0, as in the paper's code)."""
  if variance == "small":
    return (_at(sched.posterior_variance, t_B),
            _at(sched.posterior_log_variance, t_B))
  large = jnp.concatenate([sched.posterior_variance[1:2], sched.betas[1:]])
  return _at(large, t_B), jnp.log(_at(large, t_B))


def ddpm_update(sched: Schedule, variance: str, eps_x0, x_t, t: jax.Array,
                noise) -> jax.Array:
  """One ancestral step x_t -> x_{t-1} (no noise at t = 0), given the clipped
  prediction (eps, x0) at x_t."""
  _, x0 = eps_x0
  t_B = jnp.full(x_t.shape[:1], t)
  mean, _ = q_posterior(sched, x0, x_t, t_B)
  _, log_var = step_variance(sched, variance, t_B)
  return mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * noise


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """`num_steps` evenly spaced timesteps from 0 to T-1, ascending."""
  return np.unique(np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32))


def ddim_update(sched: Schedule, eta: float, eps_x0, x_t, t: jax.Array,
                t_prev: jax.Array, noise) -> jax.Array:
  """x_t -> x_{t_prev} (t_prev = -1: to x0): Song et al. (2021), eq. 12."""
  eps, x0 = eps_x0
  abar = sched.alpha_bar[t]
  abar_prev = jnp.where(t_prev >= 0, sched.alpha_bar[jnp.maximum(t_prev, 0)], 1.0)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0)) * eps
  return jnp.sqrt(abar_prev) * x0 + direction + sigma * noise


def gaussian_kl(mean_a, var_a, log_var_a, mean_b, log_var_b) -> jax.Array:
  """KL(N(mean_a, var_a) || N(mean_b, exp(log_var_b))) per dimension."""
  return 0.5 * (log_var_b - log_var_a + (var_a + (mean_a - mean_b) ** 2)
                * jnp.exp(-log_var_b) - 1.0)


def to_images(x_pm1: jax.Array) -> jax.Array:
  return jnp.clip((x_pm1 + 1.0) * 0.5, 0.0, 1.0)


def make(config: ConfigDict, spec: DatasetSpec) -> Family:
  validate(config, spec)
  m = config.model
  num_classes = spec.num_classes if m.conditional else 0
  net = UNet(base_width=m.base_width, width_multipliers=tuple(m.width_multipliers),
             blocks_per_level=m.blocks_per_level,
             attention_resolutions=tuple(m.attention_resolutions),
             dropout=m.dropout, num_classes=num_classes, patch_size=m.patch_size,
             dtype=nets.compute_dtype(m.compute_dtype))
  sched = make_schedule(noise_schedule(m.schedule, m.num_timesteps))
  num_t = int(m.num_timesteps)
  objective, variance = m.objective, m.variance
  optimizer = optim.make_optimizer(config.optimizer, config.train.num_steps)
  num_dims = math.prod(spec.image_shape)
  image_shape = tuple(spec.image_shape)
  ema_decay = float(m.ema_decay)
  guidance = float(m.guidance_scale)
  null_label = num_classes   # the "no label" class of guidance

  def labels_or_none(labels_B, batch_size):
    if not num_classes:
      return None
    if labels_B is None:  # unconditional draw from a conditional model
      return jnp.full((batch_size,), null_label, jnp.int32)
    return jnp.asarray(labels_B, jnp.int32)

  def predict(params, x_t, t_B, labels_B, guided: bool):
    """Clipped (eps, x0) at (x_t, t), with guidance when it is on and the
    labels are asked for (`guided`): an unconditional draw's null labels
    would make both halves of the guided batch the same, twice the work for
    (1 + w) eps - w eps = eps."""
    if num_classes and guidance and guided:
      both = net.apply(params, jnp.concatenate([x_t, x_t]),
                       jnp.concatenate([t_B, t_B]),
                       jnp.concatenate([labels_B, jnp.full_like(labels_B, null_label)]))
      eps_c, _ = eps_and_x0(objective, sched, both[:len(x_t)], x_t, t_B)
      eps_u, _ = eps_and_x0(objective, sched, both[len(x_t):], x_t, t_B)
      eps = (1.0 + guidance) * eps_c - guidance * eps_u
      abar = _at(sched.alpha_bar, t_B)
      x0 = (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)
    else:
      out = net.apply(params, x_t, t_B, labels_B)
      eps, x0 = eps_and_x0(objective, sched, out, x_t, t_B)
    return clip_x0(sched, x0, x_t, t_B)

  def ddpm_chain(params, key, x_T, labels_B, guided: bool, keep: int = 0):
    """Ancestral sampling over all T steps; with keep > 0 also the images at
    `keep` evenly spaced points from x_T to x_0 ([keep, B, H, W, C])."""
    def body(x_t, i):
      t = num_t - 1 - i
      t_B = jnp.full(x_t.shape[:1], t)
      noise = jax.random.normal(jax.random.fold_in(key, t), x_t.shape)
      x = ddpm_update(sched, variance, predict(params, x_t, t_B, labels_B, guided),
                      x_t, t, noise)
      return x, (x if keep else None)
    x0, path = jax.lax.scan(body, x_T, jnp.arange(num_t))
    if not keep:
      return x0, None
    at = np.round(np.linspace(0, num_t - 1, keep - 1)).astype(np.int32)
    return x0, jnp.concatenate([x_T[None], path[at]])

  def ddim_chain(params, key, x_T, labels_B, guided: bool, num_steps: int,
                 eta: float):
    steps = ddim_timesteps(num_t, num_steps)
    prevs = np.append(-1, steps[:-1]).astype(np.int32)

    def body(x_t, ts):
      t, t_prev = ts
      t_B = jnp.full(x_t.shape[:1], t)
      noise = jax.random.normal(jax.random.fold_in(key, t), x_t.shape)
      return ddim_update(sched, eta, predict(params, x_t, t_B, labels_B, guided), x_t,
                         t, t_prev, noise), None
    x0, _ = jax.lax.scan(body, x_T, (jnp.asarray(steps[::-1]), jnp.asarray(prevs[::-1])))
    return x0

  def sample_with(sampler: str, num_steps: int, eta: float):
    def sample(state: DiffusionState, key: jax.Array, num: int, labels=None):
      noise_key, chain_key = jax.random.split(key)
      x_T = jax.random.normal(noise_key, (num, *image_shape))
      labels_B = labels_or_none(labels, num)
      guided = labels is not None
      if sampler == "ddpm":
        x0, _ = ddpm_chain(state.ema_params, chain_key, x_T, labels_B, guided)
      else:
        x0 = ddim_chain(state.ema_params, chain_key, x_T, labels_B, guided,
                        num_steps, eta)
      return to_images(x0)
    return sample

  def init(key: jax.Array, example_batch: Batch) -> DiffusionState:
    del example_batch  # shapes come from the dataset spec
    x = jnp.zeros((2, *image_shape))
    labels = jnp.zeros((2,), jnp.int32) if num_classes else None
    params = net.init(key, x, jnp.zeros((2,), jnp.int32), labels)
    return DiffusionState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), ema_params=params)

  def train_step(state: DiffusionState, batch: Batch, key: jax.Array
                 ) -> tuple[DiffusionState, Metrics]:
    t_key, noise_key, drop_key, label_key = jax.random.split(key, 4)
    x0 = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    b = x0.shape[0]
    # Drawn with the global batch shape, so 1 or N devices see the same noise.
    t_B = jax.random.randint(t_key, (b,), 0, num_t)
    noise = jax.random.normal(noise_key, x0.shape)
    x_t = q_sample(sched, x0, t_B, noise)
    labels_B = None
    if num_classes:
      dropped = jax.random.bernoulli(label_key, m.label_dropout, (b,))
      labels_B = jnp.where(dropped, null_label, batch["label"])
    goal = target(objective, sched, x0, t_B, noise)

    def loss_fn(params):
      out = net.apply(params, x_t, t_B, labels_B, train=True,
                      rngs={"dropout": drop_key})
      return jnp.mean((out - goal) ** 2), {}

    state, metrics = optim.gradient_step(state, optimizer, loss_fn)
    decay = optim.warmed_up_ema_decay(ema_decay, state.step)
    return state.replace(
        ema_params=optim.ema_update(state.ema_params, state.params, decay)), metrics

  def bound_terms(params, x0, labels_B, t_B, noise) -> jax.Array:
    """L_t per image at the given timesteps: the KL for t >= 1, the discrete
    decoder's -log p(x0 | x_1) at t = 0 (nats)."""
    x_t = q_sample(sched, x0, t_B, noise)
    out = net.apply(params, x_t, t_B, labels_B)
    _, x0_hat = eps_and_x0(objective, sched, out, x_t, t_B)
    _, x0_hat = clip_x0(sched, x0_hat, x_t, t_B)
    model_mean, _ = q_posterior(sched, x0_hat, x_t, t_B)
    _, log_var = step_variance(sched, variance, t_B)
    true_mean, true_var = q_posterior(sched, x0, x_t, t_B)
    kl = gaussian_kl(true_mean, true_var,
                     jnp.log(jnp.maximum(true_var, 1e-20)), model_mean, log_var)
    decoder_nll = -discretized_gaussian_log_probs(x0, model_mean, 0.5 * log_var)
    per_dim = jnp.where((t_B == 0)[:, None, None, None], decoder_nll, kl)
    return jnp.sum(per_dim, axis=(1, 2, 3))

  def prior_nats(x0) -> jax.Array:
    abar = sched.alpha_bar[-1]
    kl = gaussian_kl(jnp.sqrt(abar) * x0, 1.0 - abar, jnp.log(1.0 - abar), 0.0, 0.0)
    return jnp.sum(kl, axis=(1, 2, 3))

  strata = int(m.bound_timesteps) or num_t

  def evaluate(state: DiffusionState, batch: Batch, key: jax.Array) -> Metrics:
    # The bound of the EMA model, the one that samples. Timesteps and noise
    # come from each image's index: independent of batch size and devices.
    params = state.ema_params
    x0 = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"])
    width = num_t // strata
    prior = prior_nats(x0)

    def bound_nats(labels_B):
      def stratum(total, k):
        t_B = k * width + jax.vmap(
            lambda kk: jax.random.randint(jax.random.fold_in(kk, k), (), 0, width))(keys)
        noise = jax.vmap(lambda kk: jax.random.normal(
            jax.random.fold_in(jax.random.fold_in(kk, k), 1), image_shape))(keys)
        return total + width * bound_terms(params, x0, labels_B, t_B, noise), None
      steps_nats, _ = jax.lax.scan(stratum, jnp.zeros(x0.shape[:1]), jnp.arange(strata))
      return steps_nats + prior

    labels_B = labels_or_none(batch["label"] if num_classes else None, x0.shape[0])
    nats = bound_nats(labels_B)
    metrics = {"nll_nats": nats, "nll_bpd": nats_to_bits_per_dim(nats, num_dims),
               "prior_nats": prior}
    if num_classes and m.label_dropout > 0:
      # The same network with the "no label" class (label dropout trains it):
      # a bound on -log p(x), comparable with the unconditional families.
      # Same timesteps and noise as the conditional bound, so the gap is paired.
      uncond = bound_nats(labels_or_none(None, x0.shape[0]))
      metrics |= {"uncond_nll_nats": uncond,
                  "uncond_nll_bpd": nats_to_bits_per_dim(uncond, num_dims)}
    return metrics

  sample = sample_with(m.sampler, int(m.sample_steps), float(m.ddim_eta))
  # The other samplers eval.json times beside sample(); the one sample() is
  # already would only be compiled and timed twice.
  samplers = {}
  if m.sampler != "ddpm":
    samplers[f"ddpm_{num_t}"] = sample_with("ddpm", num_t, 1.0)
  for steps in (10, 50):
    if steps <= num_t and not (m.sampler == "ddim" and steps == m.sample_steps):
      samplers[f"ddim_{steps}"] = sample_with("ddim", steps, float(m.ddim_eta))

  def views(state: DiffusionState, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
    """Grids as [rows, cols, H, W, C]: the denoising trajectory of 8 ancestral
    samples (x_T ... x_0 left to right), and the same x_T through DDIM (eta 0)
    with 10, 50, 250 and 1000 steps (one row each, up to T)."""
    del batch
    params = state.ema_params
    noise_key, chain_key = jax.random.split(key)
    cols = 8
    x_T = jax.random.normal(noise_key, (cols, *image_shape))
    labels_B = labels_or_none(jnp.arange(cols) % spec.num_classes
                              if num_classes else None, cols)
    _, path = ddpm_chain(params, chain_key, x_T, labels_B, True, keep=TRAJECTORY_FRAMES)
    counts = [c for c in VIEW_STEP_COUNTS if c < num_t] + [num_t]
    rows = [ddim_chain(params, chain_key, x_T, labels_B, True, c, 0.0) for c in counts]
    return {"trajectory": to_images(jnp.swapaxes(path, 0, 1)),
            "steps": to_images(jnp.stack(rows))}

  protocol = {
      "metric": ("nll_nats: the variational bound L_T + sum_t L_t + L_0 on -log P "
                 "of the 8-bit image (discretized Gaussian decoder at t = 0), "
                 + (f"all {num_t} terms summed" if strata == num_t else
                    f"its sum over t estimated without bias from {strata} "
                    f"stratified timesteps per image")
                 + ", one draw of timesteps and noise per test image; nll_bpd: "
                 "the same in bits per dimension; EMA weights"
                 + ("; class-conditional: nll_* bound -log p(x | label)"
                    if num_classes else "")
                 + ("; uncond_nll_* bound -log p(x) with the no-label class"
                    if num_classes and m.label_dropout > 0 else "")),
      "data": "8-bit pixels scaled to [-1, 1]; no dequantization (discrete decoder)",
      "process": (f"T = {num_t}, {m.schedule} schedule, predicts {objective}, "
                  f"sigma_t^2 = {variance}"),
      "sampler": (f"ddpm, {num_t} steps" if m.sampler == "ddpm" else
                  f"ddim, {m.sample_steps} steps, eta {m.ddim_eta}")
                 + (f", guidance scale {guidance}" if guidance else "")
                 + ", EMA weights",
  }
  return Family(name="diffusion", init=init, train_step=train_step, sample=sample,
                evaluate=evaluate, views=views, eval_protocol=protocol,
                conditional=bool(num_classes), samplers=samplers,
                animated_views=("trajectory",))
