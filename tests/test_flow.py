"""Normalizing flows: every layer and whole smoke models are bijections whose
log-determinant is the Jacobian's; actnorm's data-dependent init; the
preprocessing's log-determinant; each config's step; bad configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (all_equations, check_bfloat16_compute,
                      check_step_is_deterministic_and_learns, set_overrides,
                      setup_and_batch, with_first_test_images)
from configs import glow_cifar10, glow_mnist, realnvp_cifar10, realnvp_mnist
from jaxgen import configlib, evaluate, sharding, train
from jaxgen.models import count_params
from jaxgen.models import flow as flow_model
from jaxgen.nets import flow
from jaxgen.nets.conv import space_to_depth

CONFIGS = {"glow_mnist": glow_mnist, "realnvp_mnist": realnvp_mnist,
           "glow_cifar10": glow_cifar10, "realnvp_cifar10": realnvp_cifar10}


def perturbed(params, key, scale=0.1):
  """Parameters moved off their (often identity-like) init, so a test of the
  log-determinant is not a test of zeros. The LU conv's fixed permutation and
  signs stay as they are: they are not trained."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  moved = [leaf if str(path[-1].key) in ("p", "sign_s")
           else leaf + scale * jax.random.normal(k, leaf.shape)
           for (path, leaf), k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, moved)


def jacobian_log_abs_det(fn, x):
  """log |det d fn(x) / dx| for one example x, by jax.jacfwd."""
  jacobian = jax.jacfwd(lambda v: fn(v.reshape(1, *x.shape)).ravel())(x.ravel())
  return float(jnp.linalg.slogdet(jacobian)[1])


LAYERS = {
    "actnorm": flow.ActNorm(),
    "1x1_lu": flow.Invertible1x1Conv(lu=True),
    "1x1_full": flow.Invertible1x1Conv(lu=False),
    "coupling_channel": flow.AffineCoupling(8, "channel", parity=0),
    "coupling_channel_swapped": flow.AffineCoupling(8, "channel", parity=1),
    "coupling_checkerboard": flow.AffineCoupling(8, "checkerboard", parity=0),
    "coupling_checkerboard_odd": flow.AffineCoupling(8, "checkerboard", parity=1),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_inverts_and_its_logdet_is_the_jacobians(name):
  layer = LAYERS[name]
  x_BHWC = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 4))
  params = perturbed(layer.init(jax.random.PRNGKey(1), x_BHWC), jax.random.PRNGKey(2))
  y, logdet_B = layer.apply(params, x_BHWC)
  np.testing.assert_allclose(layer.apply(params, y, reverse=True), x_BHWC, atol=1e-5)
  assert not np.allclose(y, x_BHWC, atol=1e-3)  # a real transformation
  for i in range(2):
    expected = jacobian_log_abs_det(lambda v: layer.apply(params, v)[0], x_BHWC[i])
    np.testing.assert_allclose(float(logdet_B[i]), expected, rtol=1e-4, atol=1e-4)


def test_split_prior_inverts_and_its_logdet_is_the_jacobians():
  prior = flow.SplitPrior()
  x_BHWC = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4))
  params = perturbed(prior.init(jax.random.PRNGKey(1), x_BHWC), jax.random.PRNGKey(2))
  kept, eps, logdet_B = prior.apply(params, x_BHWC)
  back = prior.apply(params, kept, reverse=True, eps_BHWC=eps)
  np.testing.assert_allclose(back, x_BHWC, atol=1e-5)
  as_one_map = lambda v: jnp.concatenate(prior.apply(params, v)[:2], -1)
  expected = jacobian_log_abs_det(as_one_map, x_BHWC[0])
  np.testing.assert_allclose(float(logdet_B[0]), expected, rtol=1e-4, atol=1e-4)


def test_coupling_with_a_context_inverts_and_its_logdet_is_the_jacobians():
  # The variational dequantizer's coupling: a bijection of x for each context.
  layer = flow.AffineCoupling(8, "channel", parity=1)
  x_BHWC = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4))
  context_BHWC = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 5))
  params = perturbed(layer.init(jax.random.PRNGKey(1), x_BHWC, context_BHWC=context_BHWC),
                     jax.random.PRNGKey(2))
  y, logdet_B = layer.apply(params, x_BHWC, context_BHWC=context_BHWC)
  np.testing.assert_allclose(
      layer.apply(params, y, reverse=True, context_BHWC=context_BHWC), x_BHWC, atol=1e-5)
  other, _ = layer.apply(params, x_BHWC, context_BHWC=-context_BHWC)
  assert not np.allclose(other, y, atol=1e-3)   # the context is used
  expected = jacobian_log_abs_det(
      lambda v: layer.apply(params, v, context_BHWC=context_BHWC[:1])[0], x_BHWC[0])
  np.testing.assert_allclose(float(logdet_B[0]), expected, rtol=1e-4, atol=1e-4)


def test_variational_dequantizer_noise_lies_in_the_bin_with_density_log_q():
  # log q(n | x) must be the density of the n it returns, or the bound
  # -log p(x + n) + log q(n | x) is not a bound: log N(eps) minus
  # log |det dn/d eps|, the latter by jax.jacfwd (sigmoid included).
  dequantizer = flow.VariationalDequantizer(steps=2, width=8)
  image_BHWC = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 3)) - 0.5
  eps_BHWC = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))
  params = perturbed(dequantizer.init(jax.random.PRNGKey(2), image_BHWC, eps_BHWC),
                     jax.random.PRNGKey(3))
  noise, log_q_B = dequantizer.apply(params, image_BHWC, eps_BHWC)
  assert noise.shape == eps_BHWC.shape
  assert float(noise.min()) > 0.0 and float(noise.max()) < 1.0
  for i in range(2):
    log_abs_det = jacobian_log_abs_det(
        lambda v: dequantizer.apply(params, image_BHWC[i:i + 1], v)[0], eps_BHWC[i])
    log_normal = -0.5 * float(jnp.sum(eps_BHWC[i] ** 2 + jnp.log(2 * jnp.pi)))
    np.testing.assert_allclose(float(log_q_B[i]), log_normal - log_abs_det,
                               rtol=1e-4, atol=1e-3)
  # q depends on the image: the same eps lands elsewhere for another image.
  swapped, _ = dequantizer.apply(params, image_BHWC[::-1], eps_BHWC)
  assert not np.allclose(swapped, noise, atol=1e-3)


def test_actnorm_data_dependent_init_standardises_each_channel():
  x_BHWC = 3.0 + 2.5 * jax.random.normal(jax.random.PRNGKey(0), (16, 6, 6, 5))
  x_BHWC = x_BHWC * jnp.arange(1, 6)  # a different scale per channel
  layer = flow.ActNorm()
  y, _ = layer.apply(layer.init(jax.random.PRNGKey(1), x_BHWC), x_BHWC)
  np.testing.assert_allclose(jnp.mean(y, (0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(y, (0, 1, 2)), 1.0, atol=1e-4)


@pytest.mark.parametrize("alpha", [None, 0.05])
def test_preprocessing_inverts_and_its_logdet_is_the_jacobians(alpha):
  u_BHWC = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 3, 2))
  y, logdet_B = flow_model.preprocess_pixels(u_BHWC, alpha)
  np.testing.assert_allclose(flow_model.postprocess_pixels(y, alpha), u_BHWC,
                             atol=1e-5)
  expected = jacobian_log_abs_det(
      lambda v: flow_model.preprocess_pixels(v, alpha)[0], u_BHWC[0])
  np.testing.assert_allclose(float(logdet_B[0]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture, dtype, scan_steps", [
    ("glow", None, False), ("realnvp", None, False), ("glow", jnp.bfloat16, False),
    ("realnvp", jnp.bfloat16, False), ("glow", None, True)])
def test_whole_smoke_flow_inverts_and_its_logdet_is_the_jacobians(
    architecture, dtype, scan_steps):
  # In bfloat16 too: the inverse recomputes the coupling networks from the same
  # inputs, so at this depth bfloat16's rounding cancels (a deep bfloat16 flow
  # reconstructs its conditioning halves only to float32 round-off, which can
  # cross a bfloat16 rounding boundary: README, about 1e-3 at 3 x 2 steps
  # after training).
  model = flow.MultiScaleFlow(image_shape=(8, 8, 2), architecture=architecture,
                              num_levels=2, steps_per_level=2, width=8, dtype=dtype,
                              scan_steps=scan_steps)
  y_BHWC = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 2))
  params = perturbed(model.init(jax.random.PRNGKey(1), y_BHWC, method=model.forward),
                     jax.random.PRNGKey(2), scale=0.05)
  eps_BD, logdet_B = model.apply(params, y_BHWC, method=model.forward)
  assert eps_BD.shape == (4, 8 * 8 * 2)
  back = model.apply(params, eps_BD, method=model.inverse)
  np.testing.assert_allclose(back, y_BHWC, atol=1e-5)
  expected = jacobian_log_abs_det(
      lambda v: model.apply(params, v, method=model.forward)[0], y_BHWC[0])
  np.testing.assert_allclose(float(logdet_B[0]), expected, rtol=1e-4, atol=1e-3)


def test_scanned_glow_steps_are_the_unrolled_steps_with_stacked_params():
  # scan_steps=True runs each level's K steps as one scan: with the unrolled
  # flow's parameters stacked step by step it computes the same bijection.
  kwargs = dict(image_shape=(8, 8, 2), num_levels=2, steps_per_level=3, width=8)
  unrolled = flow.MultiScaleFlow(**kwargs)
  scanned = flow.MultiScaleFlow(**kwargs, scan_steps=True)
  y_BHWC = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 2))
  params = perturbed(unrolled.init(jax.random.PRNGKey(1), y_BHWC, method=unrolled.forward),
                     jax.random.PRNGKey(2), scale=0.05)["params"]
  k = kwargs["steps_per_level"]
  stacked = {name: value for name, value in params.items() if name.startswith("splits")}
  for level in range(kwargs["num_levels"]):
    per_step = [{part: params[f"layers_{3 * (level * k + step) + j}"]
                 for j, part in enumerate(("actnorm", "conv1x1", "coupling"))}
                for step in range(k)]
    stacked[f"layers_{level}"] = {
        "steps": jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_step)}
  # The layout is the one scanned.init makes.
  made = scanned.init(jax.random.PRNGKey(1), y_BHWC, method=scanned.forward)["params"]
  assert jax.tree.structure(made) == jax.tree.structure(stacked)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(made),
                                                jax.tree.leaves(stacked)))
  eps_want, logdet_want = unrolled.apply({"params": params}, y_BHWC, method=unrolled.forward)
  eps_got, logdet_got = scanned.apply({"params": stacked}, y_BHWC, method=scanned.forward)
  np.testing.assert_allclose(eps_got, eps_want, atol=1e-5)
  np.testing.assert_allclose(logdet_got, logdet_want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(scanned.apply({"params": stacked}, eps_want,
                                           method=scanned.inverse),
                             unrolled.apply({"params": params}, eps_want,
                                            method=unrolled.inverse), atol=1e-5)
  # Init ran the scan forward: each step's actnorm set itself from its own
  # input (the first from the squeezed image), not from one shared batch.
  bias_K = made["layers_0"]["steps"]["actnorm"]["bias"]
  np.testing.assert_allclose(bias_K[0], -jnp.mean(space_to_depth(y_BHWC, 2), (0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(bias_K[1], bias_K[0])


def test_bfloat16_coupling_network_computes_in_bfloat16():
  x_BHWC = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  params = perturbed(flow.CouplingNet(16, 6).init(jax.random.PRNGKey(1), x_BHWC),
                     jax.random.PRNGKey(2))   # the last conv starts at zero
  check_bfloat16_compute(flow.CouplingNet(16, 6),
                         flow.CouplingNet(16, 6, jnp.bfloat16), params, x_BHWC)


def test_bfloat16_flow_keeps_its_bijections_in_float32():
  model = flow.MultiScaleFlow(image_shape=(8, 8, 2), num_levels=2,
                              steps_per_level=2, width=8, dtype=jnp.bfloat16)
  y_BHWC = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 2))
  params = model.init(jax.random.PRNGKey(1), y_BHWC, method=model.forward)
  equations = list(all_equations(jax.make_jaxpr(
      lambda p, y: model.apply(p, y, method=model.forward))(params, y_BHWC).jaxpr))
  convs = [e for e in equations if e.primitive.name == "conv_general_dilated"]
  # Couplings (3 convs each) and the split prior compute in bfloat16; the 1x1
  # convolutions (matmuls) and the log-determinant in float32.
  assert len(convs) == 3 * 4 + 1
  assert all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
  matmuls = [e for e in equations if e.primitive.name == "dot_general"]
  assert matmuls and all(v.aval.dtype == jnp.float32
                         for e in matmuls for v in e.invars)
  eps_BD, logdet_B = model.apply(params, y_BHWC, method=model.forward)
  assert eps_BD.dtype == logdet_B.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_smoke_step_is_deterministic_and_learns(name, datasets, tmp_path):
  dataset = datasets(name)
  config = CONFIGS[name].get_config("smoke")
  config.optimizer.learning_rate = 3e-3
  s, batch = setup_and_batch(config, dataset, tmp_path)
  metrics = check_step_is_deterministic_and_learns(s, batch, num_steps=10)
  num_dims = int(np.prod(dataset.spec.image_shape))
  np.testing.assert_allclose(metrics["nll_bpd"],
                             metrics["nll_nats"] / (num_dims * np.log(2)), rtol=1e-5)


def test_variational_dequantization_step_is_deterministic_and_trains_q(cifar10, tmp_path):
  config = glow_cifar10.get_config("smoke")
  config.model.dequantization = "variational"
  config.optimizer.learning_rate = 3e-3
  s, batch = setup_and_batch(config, cifar10, tmp_path)
  state = train.init_state(s, batch)
  assert set(state.params) == {"flow", "dequantizer"}
  check_step_is_deterministic_and_learns(s, batch, num_steps=10)
  # The bound's gradient reaches q(n | x): its parameters move in a step.
  moved, _ = jax.jit(s.family.train_step)(state, batch, jax.random.PRNGKey(0))
  before = jax.tree.leaves(state.params["dequantizer"])
  after = jax.tree.leaves(moved.params["dequantizer"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_gpu_config_step_in_bfloat16_with_ema_is_deterministic_and_learns(
    cifar10, tmp_path):
  # ':gpu,smoke': the GPU config's structure (bfloat16 coupling networks, EMA,
  # constant rate) at smoke size.
  config = glow_cifar10.get_config("gpu,smoke")
  assert config.model.compute_dtype == "bfloat16" and config.model.ema_decay > 0
  assert config.model.flip
  config.optimizer.learning_rate = 3e-3
  s, batch = setup_and_batch(config, cifar10, tmp_path)
  check_step_is_deterministic_and_learns(s, batch, num_steps=10)


def test_flip_mirrors_training_images_and_leaves_the_noise_alone(cifar10, tmp_path):
  config = glow_cifar10.get_config("smoke")
  s_plain, batch = setup_and_batch(config, cifar10, tmp_path)
  config.model.flip = True
  s_flip = train.setup(config, tmp_path, sharding.make_mesh(1), cifar10)
  state = train.init_state(s_plain, batch)
  key = jax.random.PRNGKey(3)
  plain_step, flip_step = (jax.jit(s.family.train_step) for s in (s_plain, s_flip))
  loss = lambda step, b: float(step(state, b, key)[1]["loss"])
  # Mirror-symmetric images: mirroring changes nothing, so with the same
  # dequantization noise the step is bit for bit the plain one.
  images = np.asarray(batch["image"]).astype(np.int32)
  symmetric = batch | {"image": jax.device_put(
      ((images + images[:, :, ::-1]) // 2).astype(np.uint8), batch["image"].sharding)}
  assert loss(flip_step, symmetric) == loss(plain_step, symmetric)
  # Real images: some are mirrored, and the step sees them.
  assert loss(flip_step, batch) != loss(plain_step, batch)


def test_gpu_config_is_the_published_glow_size(cifar10, tmp_path):
  # Kingma & Dhariwal's CIFAR-10 Glow: 3 levels of K = 32 steps, width 512.
  config = glow_cifar10.get_config("gpu")
  s = train.setup(config, tmp_path, sharding.make_mesh(1), cifar10)
  batch = {"image": np.zeros((1, 32, 32, 3), np.uint8)}
  shapes = jax.eval_shape(s.family.init, jax.random.PRNGKey(0), batch)
  assert round(count_params(shapes.params) / 1e6, 1) == 44.2


def test_ema_averages_the_weights_and_evaluation_and_samples_use_it(mnist, tmp_path):
  config = glow_mnist.get_config("smoke")
  config.model.ema_decay = 0.9
  config.optimizer.learning_rate = 3e-3
  s, batch = setup_and_batch(config, mnist, tmp_path, n=16, split="test")
  step = jax.jit(s.family.train_step)
  states = [train.init_state(s, batch)]
  for i in range(3):
    states.append(step(states[-1], batch, jax.random.PRNGKey(i))[0])
  # After step n the average takes min(0.9, (1 + n) / (10 + n)) of itself.
  for n in (1, 3):
    decay = min(0.9, (1 + n) / (10 + n))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                            states[n - 1].ema_params, states[n].params)
    for got, want in zip(jax.tree.leaves(states[n].ema_params),
                         jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  state = states[3]
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)))
  # Evaluation and sampling read the average: with it set to the live
  # weights they give what the same run evaluated with ema_decay=0 gives.
  key = jax.random.PRNGKey(5)
  live_as_ema = state.replace(ema_params=state.params)
  config.model.ema_decay = 0.0
  s_off = train.setup(config, tmp_path, sharding.make_mesh(1), mnist)
  outputs = {
      "nll_nats": lambda s_, st: s_.family.evaluate(st, batch, key)["nll_nats"],
      "samples": lambda s_, st: s_.family.sample(st, key, 4)}
  for name, output in outputs.items():
    without = np.asarray(output(s_off, state))
    np.testing.assert_allclose(output(s, live_as_ema), without, rtol=1e-6, err_msg=name)
    assert not np.allclose(output(s, state), without), name
  # With the EMA off the average is the weights themselves.
  off_state = jax.jit(s_off.family.train_step)(states[0], batch, key)[0]
  for a, b in zip(jax.tree.leaves(off_state.ema_params), jax.tree.leaves(off_state.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, dequantization", [
    ("glow_mnist", "uniform"), ("realnvp_mnist", "uniform"),
    ("glow_mnist", "variational")])
def test_evaluate_views_and_samples(name, dequantization, datasets, tmp_path):
  dataset = datasets(name)
  config = CONFIGS[name].get_config("smoke")
  config.model.dequantization = dequantization
  s, batch = setup_and_batch(config, dataset, tmp_path, n=16, split="test")
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(0)
  metrics = jax.jit(s.family.evaluate)(state, batch, key)
  assert np.all(np.asarray(metrics["inverse_max_abs_error"]) < 1e-4)
  assert not np.any(np.asarray(metrics["inverse_failed"]))
  # A bound on the NLL of discrete images: positive (P(x) <= 1), and at most a
  # few bits/dim above 8 (uniform) for an untrained, data-initialised flow.
  bpd = np.asarray(metrics["nll_bpd"])
  assert np.all((bpd > 0.0) & (bpd < 12.0)), bpd
  # The numbers of an image depend on its index, not on its batch-mates.
  half = {k: v[:8] for k, v in batch.items()}
  np.testing.assert_allclose(jax.jit(s.family.evaluate)(state, half, key)["nll_nats"],
                             metrics["nll_nats"][:8], rtol=1e-6)
  views = jax.jit(s.family.views)(state, batch, key)
  h, w, c = dataset.spec.image_shape
  assert views["temperatures"].shape == (4, 8, h, w, c)
  # T = 0 decodes eps = 0: every column of that row is the same image.
  np.testing.assert_allclose(views["temperatures"][0], views["temperatures"][0][:1]
                             .repeat(8, 0), atol=1e-6)
  assert views["interpolations"].shape == (8, 8, h, w, c)
  samples = jax.jit(s.family.sample, static_argnums=2)(state, key, 6)
  assert samples.shape == (6, h, w, c)
  assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_iwae_bound_is_the_log_mean_density_of_the_one_draw_bounds(
    dequantization, mnist, tmp_path):
  # eval.iwae_samples=k: k dequantizations of each test image; draw j is the
  # one-draw metric under the key fold_in(key, j) (draw 0: under key itself),
  # -log p(x + n_j) + log q(n_j | x) for variational noise.
  config = glow_mnist.get_config("smoke")
  config.model.dequantization = dequantization
  s, batch = setup_and_batch(config, mnist, tmp_path, n=16, split="test")
  state = train.init_state(s, batch)
  key = jax.random.PRNGKey(0)
  k = 6
  draw_keys = [key] + [jax.random.fold_in(key, j) for j in range(1, k)]
  evaluate_one_draw = jax.jit(s.family.evaluate)
  draws_KB = np.stack([np.asarray(evaluate_one_draw(state, batch, dk)["nll_nats"],
                                  np.float64) for dk in draw_keys])
  config.eval.iwae_samples = k
  s = train.setup(config, tmp_path, sharding.make_mesh(1), mnist)
  metrics = jax.jit(s.family.evaluate)(state, batch, key)
  # The same noise as the one-draw metric (another draw moves an image by
  # far more than this tolerance: see the spread below).
  np.testing.assert_allclose(metrics["nll_nats"], draws_KB[0], rtol=1e-6)
  # -log (1/k) sum_j exp(-nats_j), by hand in float64.
  low = draws_KB.min(0)
  by_hand_B = low - np.log(np.mean(np.exp(-(draws_KB - low)), 0))
  np.testing.assert_allclose(metrics[f"iwae{k}_nats"], by_hand_B, rtol=1e-6)
  num_dims = int(np.prod(mnist.spec.image_shape))
  np.testing.assert_allclose(metrics[f"iwae{k}_bpd"],
                             by_hand_B / (num_dims * np.log(2)), rtol=1e-6)
  # An untrained flow's density varies inside each pixel's bin: the draws
  # differ, and the bound is tighter than every image's mean one-draw bound.
  assert np.all(draws_KB.std(0) > 0.1)
  assert np.all(np.asarray(metrics[f"iwae{k}_nats"]) < draws_KB.mean(0))


def test_a_flow_whose_inverse_overflows_is_reported_not_crashed(mnist, tmp_path):
  config = glow_mnist.get_config("smoke")
  config.eval.num_samples = 16
  config.eval.timing_samples = 0
  mnist = with_first_test_images(mnist, 1000)   # eval.json: quick
  s, batch = setup_and_batch(config, mnist, tmp_path, n=16, split="test")
  state = train.init_state(s, batch)
  # Far-off weights: the coupling scales' inverse overflows float32.
  state = state.replace(params=perturbed(state.params, jax.random.PRNGKey(1), 3.0))
  metrics = jax.jit(s.family.evaluate)(state, batch, jax.random.PRNGKey(0))
  # A NaN reconstruction is the largest error, 1, not a NaN the mean skips.
  np.testing.assert_array_equal(metrics["inverse_max_abs_error"], 1.0)
  np.testing.assert_array_equal(metrics["inverse_failed"], 1.0)
  # Every sample is NaN: eval.json keeps the likelihood metrics and says why
  # there are no sample metrics.
  result = evaluate.run(s, state)
  assert result["sample_metrics"]["non_finite_samples"] == 16
  assert "diverged" in result["sample_metrics"]["skipped"]["all"]
  written = json.loads((tmp_path / "eval.json").read_text())
  assert written["metrics"]["inverse_failed"]["mean"] == 1.0
  # Images handed in for scoring must be finite.
  images = np.full((4, 28, 28, 1), 0.5, np.float32)
  images[2, 3, 3, 0] = np.nan
  with pytest.raises(evaluate.SamplesError, match="1 of 4 samples hold NaN or inf"):
    evaluate.score_images(s, images)


@pytest.mark.parametrize("overrides, key", [
    ({"data.binarize": "dynamic"}, "data.binarize"),
    ({"model.num_levels": 3}, "model.num_levels"),       # 28 / 8 is no integer
    ({"model.architecture": "maf"}, "model.architecture"),
    ({"model.preprocess": "logit", "model.logit_alpha": 0.0}, "model.logit_alpha"),
    ({"model.compute_dtype": "float16"}, "model.compute_dtype"),
    ({"model.dequantization": "learned"}, "model.dequantization"),
    ({"model.dequantization": "variational", "model.dequant_width": 0},
     "model.dequant_width"),
    ({"model.ema_decay": 1.0}, "model.ema_decay"),
    ({"model.architecture": "realnvp", "model.scan_steps": True}, "model.scan_steps"),
])
def test_bad_flow_configs_name_the_key(overrides, key, mnist, tmp_path):
  config = glow_mnist.get_config("smoke")
  set_overrides(config, overrides)
  with pytest.raises(configlib.ConfigError, match=key.replace(".", r"\.")):
    train.setup(config, tmp_path, sharding.make_mesh(1), mnist)
