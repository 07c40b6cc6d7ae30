"""The batch-norm classifier (cifar10net's "bn_pool" network): its step, its
batch statistics across devices, and evaluation that ignores the batch; and
the max pooling both classifier networks use."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_step_is_deterministic_and_learns, setup_and_batch
from configs import classifier_cifar10
from jaxgen import sharding, train
from jaxgen.nets import classifier as classifier_nets
from jaxgen.nets import max_pool


def _smoke_config():
  config = classifier_cifar10.get_config("smoke")
  assert config.model.arch == "bn_pool"   # the smoke net has the real structure
  return config


def test_bn_step_is_deterministic_learns_and_updates_batch_stats(cifar10, tmp_path):
  s, batch = setup_and_batch(_smoke_config(), cifar10, tmp_path, n=64)
  check_step_is_deterministic_and_learns(s, batch)
  state = train.init_state(s, batch)
  stepped, _ = jax.jit(s.family.train_step)(state, batch, jax.random.PRNGKey(0))
  before = jax.tree.leaves(state.batch_stats)
  after = jax.tree.leaves(stepped.batch_stats)
  assert before and len(before) == len(after)
  assert all(not np.allclose(a, b) for a, b in zip(before, after))


def _history_on(n, dataset, tmp_path):
  config = _smoke_config()
  config.optimizer.name = "sgd"
  config.optimizer.b1 = 0.9
  config.optimizer.learning_rate = 0.05
  config.optimizer.weight_decay = 0.0
  config.model.max_shift = 0     # augmentation draws per-example noise by shape;
  config.model.flip = False      # keep the comparison to the statistics alone
  config.train.progress_bar = False
  config.eval.batch_size = 64    # divisible by 8 devices
  s = train.setup(config, tmp_path / f"bn{n}", sharding.make_mesh(n), dataset)
  images = dataset.train
  batch = sharding.put_batch({"image": images.images[:64],
                              "label": images.labels[:64]}, s.mesh)
  step = jax.jit(s.family.train_step)
  state = train.init_state(s, batch)
  losses = []
  for i in range(3):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.batch_stats)


def test_batch_stats_are_over_the_global_batch_on_eight_devices(cifar10, tmp_path,
                                                                num_devices):
  losses_1, stats_1 = _history_on(1, cifar10, tmp_path)
  losses_8, stats_8 = _history_on(num_devices, cifar10, tmp_path)
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(stats_1), jax.tree.leaves(stats_8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluation_of_an_image_does_not_depend_on_its_batch(cifar10, tmp_path):
  s, batch_32 = setup_and_batch(_smoke_config(), cifar10, tmp_path, n=32,
                                split="test")
  _, batch_8 = setup_and_batch(_smoke_config(), cifar10, tmp_path / "b8", n=8,
                               split="test")
  state = train.init_state(s, batch_32)
  state, _ = jax.jit(s.family.train_step)(state, batch_32, jax.random.PRNGKey(0))
  xent_32 = s.family.evaluate(state, batch_32, jax.random.PRNGKey(1))["xent_nats"]
  xent_8 = s.family.evaluate(state, batch_8, jax.random.PRNGKey(1))["xent_nats"]
  np.testing.assert_allclose(np.asarray(xent_32)[:8], np.asarray(xent_8), rtol=1e-5)


def test_cached_info_without_arch_is_the_plain_network():
  info = {"widths": [8, 16], "hidden": 32, "dropout": 0.0}
  assert isinstance(classifier_nets.make_classifier_net(info, 10),
                    classifier_nets.ConvClassifier)
  with pytest.raises(ValueError, match="'resnet' is unknown"):
    classifier_nets.make_classifier_net({**info, "arch": "resnet"}, 10)


def test_flip_averaged_evaluation_is_mirror_invariant_and_keeps_the_weights(cifar10):
  x = np.asarray(cifar10.test.images[:6], np.float32) / 255.0
  info = {"arch": "bn_pool", "widths": [8, 16], "hidden": 32, "dropout": 0.0}
  plain = classifier_nets.make_classifier_net(info, 10)
  averaged = classifier_nets.make_classifier_net({**info, "flip_average": True}, 10)
  variables = plain.init(jax.random.PRNGKey(0), x[:1])
  # Same parameter tree: a trained classifier can be evaluated either way.
  assert (jax.tree.structure(variables)
          == jax.tree.structure(averaged.init(jax.random.PRNGKey(0), x[:1])))
  logits, feats = averaged.apply(variables, x)
  logits_m, feats_m = averaged.apply(variables, x[:, :, ::-1])
  np.testing.assert_allclose(logits, logits_m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats, feats_m, rtol=1e-5, atol=1e-6)
  # The average of the two plain passes, and not the plain pass itself.
  plain_logits, _ = plain.apply(variables, x)
  mirrored_logits, _ = plain.apply(variables, x[:, :, ::-1])
  np.testing.assert_allclose(logits, (plain_logits + mirrored_logits) / 2,
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits, plain_logits, atol=1e-4)


@pytest.mark.parametrize("shape,window", [((3, 8, 8, 4), 2), ((2, 7, 9, 3), 2),
                                          ((2, 9, 6, 5), 3)])
def test_max_pool_matches_flax_values_and_gradients_bit_for_bit(shape, window):
  # Ties on purpose: ReLU zeros and repeated values, whose gradient both give
  # to the first maximum of the tile; odd sizes drop the remainder ("VALID").
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  x = jnp.round(jnp.maximum(x, 0.0) * 2.0) / 2.0
  weights = jax.random.normal(jax.random.PRNGKey(1), (
      shape[0], shape[1] // window, shape[2] // window, shape[3]))

  def flax_loss(x):
    return jnp.sum(weights * nn.max_pool(x, (window, window), (window, window)))

  def ours_loss(x):
    return jnp.sum(weights * max_pool(x, window))

  np.testing.assert_array_equal(max_pool(x, window),
                                nn.max_pool(x, (window, window), (window, window)))
  ours, theirs = jax.grad(ours_loss)(x), jax.grad(flax_loss)(x)
  assert np.sum(np.asarray(x)[:, :shape[1] // window * window] == 0) > 10  # ties
  np.testing.assert_array_equal(ours, theirs)
  assert np.count_nonzero(ours) == weights.size  # one position per tile
  # Forward mode too (a JVP rule, not only a VJP).
  tangent = jax.random.normal(jax.random.PRNGKey(2), shape)
  np.testing.assert_array_equal(jax.jvp(ours_loss, (x,), (tangent,))[1],
                                jax.jvp(flax_loss, (x,), (tangent,))[1])
