"""Diffusion: the forward process and its posterior against hand computations,
DDIM against DDPM, exact reconstruction from the true noise, the discrete
decoder, the bound's estimator, each config's step, eval outputs, bad configs."""

import json
import math

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (check_bfloat16_compute, check_step_is_deterministic_and_learns,
                      set_overrides, setup_and_batch, with_first_test_images)
from configs import ddpm_cifar10, ddpm_mnist
from jaxgen import configlib, evaluate, likelihoods, sharding, train
from jaxgen.models import count_params
from jaxgen.models import diffusion as dm
from jaxgen.nets.unet import AttentionBlock, UNet, _group_norm

T = 50


@pytest.fixture(params=["linear", "cosine"])
def sched(request):
  return dm.make_schedule(dm.noise_schedule(request.param, T))


def test_closed_form_q_matches_iterating_the_single_step_process(sched):
  betas = np.asarray(sched.betas, np.float64)
  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z: mean coefficient and
  # variance by recursion from x0 (mean 1 * x0, variance 0).
  coef, var = 1.0, 0.0
  for t in range(T):
    coef, var = np.sqrt(1 - betas[t]) * coef, (1 - betas[t]) * var + betas[t]
    np.testing.assert_allclose(np.sqrt(sched.alpha_bar[t]), coef, rtol=1e-5)
    np.testing.assert_allclose(1 - sched.alpha_bar[t], var, rtol=1e-5, atol=1e-7)
  # And by simulation: 20,000 chains of the single step, against the moments
  # of q(x_t | x0) (within 4 standard errors), which q_sample draws from.
  n, t = 20_000, T // 2 - 1
  x0 = jnp.full((n, 1, 1, 1), 0.6)
  x = x0
  for s in range(t + 1):
    z = jax.random.normal(jax.random.PRNGKey(s), x.shape)
    x = jnp.sqrt(1 - sched.betas[s]) * x + jnp.sqrt(sched.betas[s]) * z
  mean, var = 0.6 * np.sqrt(sched.alpha_bar[t]), 1 - sched.alpha_bar[t]
  assert abs(float(jnp.mean(x)) - mean) < 4 * np.sqrt(var / n)
  assert abs(float(jnp.var(x)) - var) < 4 * var * np.sqrt(2 / n)
  t_B = jnp.full((1,), t)
  np.testing.assert_allclose(dm.q_sample(sched, x0[:1], t_B, jnp.zeros((1, 1, 1, 1))),
                             mean, rtol=1e-5)
  np.testing.assert_allclose(dm.q_sample(sched, x0[:1], t_B, jnp.ones((1, 1, 1, 1))),
                             mean + np.sqrt(var), rtol=1e-5)


def test_posterior_matches_bayes_rule_by_hand(sched):
  abar = np.asarray(sched.alpha_bar, np.float64)
  betas = np.asarray(sched.betas, np.float64)
  x0, x_t = np.float64(0.3), np.float64(-0.8)
  for t in (1, 7, T - 1):
    # q(x_{t-1} | x0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times
    # q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t), completed square.
    precision = 1 / (1 - abar[t - 1]) + (1 - betas[t]) / betas[t]
    var = 1 / precision
    mean = var * (np.sqrt(abar[t - 1]) * x0 / (1 - abar[t - 1])
                  + np.sqrt(1 - betas[t]) * x_t / betas[t])
    got_mean, got_var = dm.q_posterior(sched, jnp.full((1, 1, 1, 1), x0),
                                       jnp.full((1, 1, 1, 1), x_t), jnp.array([t]))
    np.testing.assert_allclose(float(got_mean.squeeze()), mean, rtol=1e-4)
    np.testing.assert_allclose(float(got_var.squeeze()), var, rtol=1e-4)


@pytest.mark.parametrize("objective", dm.OBJECTIVES)
def test_true_target_gives_back_the_noise_and_x0_exactly(objective, sched):
  key_x, key_n = jax.random.split(jax.random.PRNGKey(0))
  x0 = jax.random.uniform(key_x, (T, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(key_n, x0.shape)
  t_B = jnp.arange(T)
  x_t = dm.q_sample(sched, x0, t_B, noise)
  eps, x0_hat = dm.eps_and_x0(objective, sched,
                              dm.target(objective, sched, x0, t_B, noise), x_t, t_B)
  # The x0 implied at the noisiest steps divides by sqrt(abar_t) ~ 0.
  np.testing.assert_allclose(eps, noise, atol=2e-3)
  np.testing.assert_allclose(x0_hat[:T // 2], x0[:T // 2], atol=1e-4)


def test_ddim_with_a_model_that_knows_the_noise_reconstructs_x0(sched):
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4, 1), minval=-1, maxval=1)
  steps = dm.ddim_timesteps(T, 7)
  x = dm.q_sample(sched, x0, jnp.full((3,), steps[-1]),
                  jax.random.normal(jax.random.PRNGKey(1), x0.shape))
  prevs = np.append(-1, steps[:-1])
  for t, t_prev in zip(steps[::-1], prevs[::-1]):
    t_B = jnp.full((3,), t)
    abar = dm._at(sched.alpha_bar, t_B)  # pylint: disable=protected-access
    oracle_eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
    x = dm.ddim_update(sched, 0.0, (oracle_eps, x0), x, t, t_prev, jnp.zeros_like(x))
  np.testing.assert_allclose(x, x0, atol=1e-5)


def test_ddim_eta_1_step_is_the_ddpm_step(sched):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x0 = jax.random.uniform(keys[0], (2, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(keys[2], x0.shape)
  for t in (0, 1, 9, T - 1):
    t_B = jnp.full((2,), t)
    # x_t a draw from q(x_t | x0), and a prediction of x0 that is off.
    x_t = dm.q_sample(sched, x0, t_B, jax.random.normal(keys[1], x0.shape))
    prediction = dm.clip_x0(sched, x0 + 0.1 * jax.random.normal(keys[3], x0.shape),
                            x_t, t_B)
    ddpm = dm.ddpm_update(sched, "small", prediction, x_t, jnp.array(t), noise)
    ddim = dm.ddim_update(sched, 1.0, prediction, x_t, jnp.array(t),
                          jnp.array(t - 1), noise)
    np.testing.assert_allclose(ddim, ddpm, atol=1e-5)


def test_discretized_gaussian_sums_to_one_over_the_256_values():
  x_V = jnp.arange(256) / 127.5 - 1.0
  for mean, log_scale in [(0.0, -1.0), (0.9, -4.0), (-1.3, 0.5), (0.2, -8.0)]:
    log_p = likelihoods.discretized_gaussian_log_probs(
        x_V, jnp.float32(mean), jnp.float32(log_scale))
    assert np.all(np.isfinite(log_p))
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(log_p))), 1.0, rtol=1e-4)


# (The unconditional MNIST step is trained in test_train_eval_views...)
@pytest.mark.parametrize("name, arg, conditional", [
    ("ddpm_mnist", "smoke", True), ("ddpm_cifar10", "smoke", False),
    ("ddpm_cifar10", "cpu,smoke", True)])
def test_smoke_step_is_deterministic_and_learns(name, arg, conditional, mnist,
                                                cifar10, tmp_path):
  module = {"ddpm_mnist": ddpm_mnist, "ddpm_cifar10": ddpm_cifar10}[name]
  config = module.get_config(arg)
  config.model.conditional = conditional
  config.optimizer.learning_rate = 3e-3
  dataset = mnist if name == "ddpm_mnist" else cifar10
  s, batch = setup_and_batch(config, dataset, tmp_path, n=16, split="test")
  check_step_is_deterministic_and_learns(s, batch, num_steps=12, ratio=0.9)


def test_ddpm_sampler_equals_ddim_with_eta_1_over_all_steps(mnist, tmp_path):
  config = ddpm_mnist.get_config("smoke")
  config.model.variance = "small"
  config.model.ddim_eta = 1.0
  config.model.sample_steps = config.model.num_timesteps
  s, batch = setup_and_batch(config, mnist, tmp_path, n=16, split="test")
  state = train.init_state(s, batch)
  # Weights off their init (whose zero output conv predicts eps = 0).
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 0.02, state.ema_params))
  num_t = config.model.num_timesteps
  key = jax.random.PRNGKey(3)
  draw = lambda f: jax.jit(f, static_argnums=2)(state, key, 4)
  # sample() is DDIM with eta 1 over all T steps here.
  ddpm, ddim = draw(s.family.samplers[f"ddpm_{num_t}"]), draw(s.family.sample)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
  assert float(jnp.std(ddpm)) > 0.05   # not a blank image


def test_unguided_draw_of_a_guided_model_runs_the_network_once(mnist, tmp_path):
  """Without labels, guidance would mix two identical predictions of the null
  class, (1 + w) eps - w eps: the draw must run the network once per step, on
  the 4 images, not on a doubled batch of 8 as a labelled guided draw does."""
  config = ddpm_mnist.get_config("smoke")
  config.model.conditional = True
  config.model.guidance_scale = 2.0
  s, batch = setup_and_batch(config, mnist, tmp_path, n=16, split="test")
  state = train.init_state(s, batch)
  key, labels = jax.random.PRNGKey(3), jnp.arange(4) % 10
  sample = s.family.sample
  program = lambda *labelled: str(jax.make_jaxpr(
      lambda st, k: sample(st, k, 4, *labelled))(state, key))
  doubled = "[8,28,28,"    # the network's input, two copies of 4 images
  assert doubled in program(labels)
  assert doubled not in program()
  assert "[4,28,28," in program()


def test_conditional_prediction_depends_on_the_label():
  net = UNet(base_width=8, width_multipliers=(1, 2), blocks_per_level=1,
             num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t, labels = jnp.array([3, 3]), jnp.array([1, 1])
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x, t, labels)
  # Move the zero-initialised output conv so the output is not identically 0.
  params = jax.tree.map(lambda p: p + 0.05, params)
  apply = jax.jit(net.apply)
  same = apply(params, x, t, labels)
  other = apply(params, x, t, jnp.array([1, 7]))
  np.testing.assert_allclose(other[0], same[0], atol=1e-6)
  assert np.max(np.abs(other[1] - same[1])) > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_output():
  kwargs = dict(base_width=8, width_multipliers=(1, 2), blocks_per_level=1,
                attention_resolutions=(4,))
  net32, net16 = UNet(**kwargs), UNet(**kwargs, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t = jnp.array([3, 40])
  params = net16.init(jax.random.PRNGKey(1), x, t)
  params = jax.tree.map(lambda p: p + 0.05, params)  # off the zero output conv
  check_bfloat16_compute(net32, net16, params, x, t)


class FlaxDenseAttentionBlock(nn.Module):
  """The attention block as first written, with one nn.Dense for q, k and v
  (QKVProjection replaced it for speed)."""

  @nn.compact
  def __call__(self, x_BHWC):
    b, h, w, c = x_BHWC.shape
    normed = _group_norm(c, None)(x_BHWC)
    qkv = nn.Dense(3 * c)(normed).reshape(b, h * w, 3, c)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c), -1)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
    return x_BHWC + nn.Dense(c, kernel_init=nn.initializers.zeros)(out)


@pytest.mark.parametrize("shape", [(3, 4, 4, 8), (2, 8, 8, 64)])
def test_attention_projection_matches_flax_dense(shape):
  """The attention block's QKVProjection is the nn.Dense it replaced in
  parameters (names, shapes, initial values: old checkpoints load) and in
  outputs and gradients."""
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), shape) + 1.0
  ours, flax_dense = AttentionBlock(), FlaxDenseAttentionBlock()
  params = ours.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, params,
               flax_dense.init(jax.random.PRNGKey(1), x))
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), flax_dense.apply(params, x),
                             atol=2e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.cos(m.apply(p, x)))
  got = jax.grad(loss(ours), (0, 1))(params, x)
  want = jax.grad(loss(flax_dense), (0, 1))(params, x)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(
      g, w, atol=2e-5 * float(np.max(np.abs(w)))), got, want)


def test_bfloat16_step_is_deterministic_and_learns(mnist, tmp_path):
  config = ddpm_mnist.get_config("smoke")
  config.model.compute_dtype = "bfloat16"
  config.optimizer.learning_rate = 3e-3
  s, batch = setup_and_batch(config, mnist, tmp_path, n=16, split="test")
  check_step_is_deterministic_and_learns(s, batch, num_steps=12, ratio=0.9)


def test_bound_estimate_is_unbiased_for_the_exact_sum(mnist, tmp_path):
  config = ddpm_mnist.get_config("smoke")
  config.model.num_timesteps = 8
  config.model.sample_steps = 4
  s, batch = setup_and_batch(config, mnist, tmp_path, n=64, split="test")
  state = train.init_state(s, batch)
  step = jax.jit(s.family.train_step)
  for i in range(5):
    state = step(state, batch, jax.random.PRNGKey(i))[0]
  draws = {}
  for k in (0, 2):
    config.model.bound_timesteps = k
    family = train.setup(config, tmp_path, sharding.make_mesh(1), mnist).family
    ev = jax.jit(family.evaluate)
    draws[k] = np.asarray([ev(state, batch, jax.random.PRNGKey(r))["nll_nats"]
                           for r in range(10)]).ravel()
    assert np.all(np.isfinite(draws[k])) and np.all(draws[k] > 0)
  # The exact sum's only noise is that of x_t; the 2-timestep estimate adds
  # the choice of t (4x one term per stratum of 4), and still has the same
  # expectation: per image, the mean difference is within 4 standard errors
  # of 0, and those 4 standard errors are small enough to catch a wrong
  # weighting (dropping the stratum width would halve the estimate).
  difference = draws[2] - draws[0]
  stderr = difference.std() / np.sqrt(difference.size)
  assert abs(difference.mean()) < 4 * stderr
  assert 4 * stderr < 0.3 * draws[0].mean()


def test_conditional_bound_also_bounds_p_x_with_the_no_label_class(mnist, tmp_path):
  config = ddpm_mnist.get_config("smoke")
  config.model.conditional = True
  s, batch = setup_and_batch(config, mnist, tmp_path, n=8, split="test")
  state = train.init_state(s, batch)
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 0.02, state.ema_params))
  ev = jax.jit(s.family.evaluate)
  key = jax.random.PRNGKey(0)
  metrics = ev(state, batch, key)
  # The no-label class is index num_classes (10); feeding it as the label
  # must give the unconditional bound with the same timesteps and noise.
  as_null = ev(state, {**batch, "label": np.full(8, 10, np.int32)}, key)
  np.testing.assert_allclose(metrics["uncond_nll_nats"], as_null["nll_nats"], rtol=1e-5)
  assert np.max(np.abs(metrics["uncond_nll_nats"] - metrics["nll_nats"])) > 1e-3
  np.testing.assert_allclose(
      metrics["uncond_nll_bpd"],
      metrics["uncond_nll_nats"] / (np.log(2) * 28 * 28), rtol=1e-5)
  # Without label dropout the no-label class is never trained: no such bound.
  config.model.label_dropout = 0.0
  family = train.setup(config, tmp_path / "x", sharding.make_mesh(1), mnist).family
  assert "uncond_nll_nats" not in jax.jit(family.evaluate)(state, batch, key)


def test_train_eval_views_and_sampling_speed(mnist, tmp_path):
  config = ddpm_mnist.get_config("smoke")
  config.train.progress_bar = False
  config.eval.num_samples = 0   # sample metrics: tests/test_evaluation.py
  config.eval.timing_samples = 4
  # The bound over the first 1,000 test images keeps the suite quick.
  mnist = with_first_test_images(mnist, 1000)
  run = train.train(config, tmp_path, mesh=sharding.make_mesh(1), dataset=mnist)
  evaluate.run(run.setup, run.state)
  result = json.loads((tmp_path / "eval.json").read_text())
  assert result["step"] == config.train.num_steps
  bpd = result["metrics"]["nll_bpd"]["mean"]
  assert 0 < bpd < 30 and np.isfinite(bpd)
  speed = result["sampling_speed"]
  num_t = config.model.num_timesteps
  assert {"sample", f"ddpm_{num_t}", "ddim_10"} <= set(speed)
  assert all(speed[k]["images_per_second"] > 0 for k in ("sample", "ddim_10"))
  step = config.train.num_steps
  assert (tmp_path / "samples" / f"trajectory_step_{step:06d}.gif").exists()
  assert (tmp_path / "samples" / f"steps_step_{step:06d}.png").exists()
  # Per-image numbers do not depend on batch-mates.
  s, batch = setup_and_batch(config, mnist, tmp_path / "x", n=16, split="test")
  ev = jax.jit(s.family.evaluate)
  full = ev(run.state, batch, jax.random.PRNGKey(0))["nll_nats"]
  half = ev(run.state, {k: v[:8] for k, v in batch.items()},
            jax.random.PRNGKey(0))["nll_nats"]
  np.testing.assert_allclose(half, full[:8], rtol=1e-5)
  views = jax.jit(s.family.views)(run.state, batch, jax.random.PRNGKey(0))
  assert views["trajectory"].shape == (8, dm.TRAJECTORY_FRAMES, 28, 28, 1)
  assert views["steps"].shape == (2, 8, 28, 28, 1)   # 10 and T = 20 steps


@pytest.mark.parametrize("arg, millions", [("paper", 35.7), ("cpu", 4.0), ("gpu", 6.5)])
def test_cifar10_config_sizes(arg, millions, cifar10, tmp_path):
  # ":paper" is Ho et al.'s 35.7M network; ":cpu" the README's 2-core run;
  # ":gpu" the README's H200 run (the default network, class-conditional).
  config = ddpm_cifar10.get_config(arg)
  s = train.setup(config, tmp_path, sharding.make_mesh(1), cifar10)
  batch = {"image": np.zeros((1, 32, 32, 3), np.uint8), "label": np.zeros(1, np.int32)}
  shapes = jax.eval_shape(s.family.init, jax.random.PRNGKey(0), batch)
  assert round(count_params(shapes.params) / 1e6, 1) == millions


def test_cifar10_config_takes_one_network_size():
  with pytest.raises(configlib.ConfigError, match="pick one of paper, cpu, gpu"):
    ddpm_cifar10.get_config("cpu,gpu")


@pytest.mark.parametrize("overrides, key", [
    ({"data.binarize": "dynamic"}, "data.binarize"),
    ({"model.bound_timesteps": 3}, "model.bound_timesteps"),   # 20 % 3 != 0
    ({"model.sample_steps": 50}, "model.sample_steps"),        # > T = 20
    ({"model.objective": "score"}, "model.objective"),
    ({"model.compute_dtype": "float16"}, "model.compute_dtype"),
    ({"model.guidance_scale": 1.0}, "model.guidance_scale"),   # unconditional
    ({"model.width_multipliers": (1, 2, 2, 2)}, "model.width_multipliers"),
])
def test_bad_diffusion_configs_name_the_key(overrides, key, mnist, tmp_path):
  config = ddpm_mnist.get_config("smoke")
  set_overrides(config, overrides)
  with pytest.raises(configlib.ConfigError, match=key.replace(".", r"\.")):
    train.setup(config, tmp_path, sharding.make_mesh(1), mnist)
