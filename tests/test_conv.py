"""jaxgen.nets.conv_general_dilated (what jaxgen's Flax convolutions compute
with): the same function as lax.conv_general_dilated, values and derivatives
in both modes, on every path it takes; and `Conv` is nn.Conv's module."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import nets

NHWC = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel shape, padding, the path expected)
CASES = [
    ((2, 6, 5, 8), (1, 1, 8, 3), "SAME", "pointwise"),
    ((2, 6, 5, 3), (1, 1, 3, 8), ((0, 0), (0, 0)), "pointwise"),
    ((2, 6, 5, 16), (3, 3, 16, 2), "SAME", "taps"),
    ((2, 6, 5, 16), (3, 3, 16, 4), "VALID", "taps"),
    ((2, 6, 5, 16), (3, 3, 16, 4), ((2, 0), (0, 1)), "taps"),
    ((2, 6, 5, 3), (3, 3, 3, 16), "SAME", "patches"),
    ((2, 6, 5, 2), (5, 3, 2, 16), ((0, 2), (1, 0)), "patches"),
    ((2, 6, 5, 3), (3, 3, 3, 12), "SAME", None),     # few channels both sides
    ((2, 6, 5, 16), (3, 3, 16, 12), "SAME", "taps"),
    ((2, 6, 5, 13), (3, 3, 13, 16), "SAME", None),  # 13 is not few
    ((2, 6, 5, 16), (3, 3, 16, 16), "SAME", None),    # many both sides
    ((2, 6, 5, 3), (1, 1, 3, 8), ((1, 1), (1, 1)), None),   # a padded 1x1
]


def _lax(x, k, padding, strides=(1, 1)):
  return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)


def _ours(x, k, padding, strides=(1, 1)):
  return nets.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("x_shape,k_shape,padding,path", CASES)
def test_same_values_and_derivatives_as_lax(x_shape, k_shape, padding, path):
  assert nets._matmul_rule(jnp.zeros(x_shape), jnp.zeros(k_shape), (1, 1), padding,
                           None, None, NHWC, 1, 1, None) == path
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(keys[0], x_shape, jnp.float64)
    k = jax.random.normal(keys[1], k_shape, jnp.float64)
    y = _lax(x, k, padding)
    cotangent = jax.random.normal(keys[2], y.shape, jnp.float64)
    tangents = (jax.random.normal(keys[3], x_shape, jnp.float64),
                jax.random.normal(keys[4], k_shape, jnp.float64))
    # float64 rounding of sums taken in another order (values up to ~100);
    # a wrong tap, padding or transpose is off by O(1).
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)

    close(_ours(x, k, padding), y)
    for ours, theirs in zip(jax.vjp(lambda x, k: _ours(x, k, padding), x, k)[1](cotangent),
                            jax.vjp(lambda x, k: _lax(x, k, padding), x, k)[1](cotangent)):
      close(ours, theirs)
    close(jax.jvp(lambda x, k: _ours(x, k, padding), (x, k), tangents)[1],
          jax.jvp(lambda x, k: _lax(x, k, padding), (x, k), tangents)[1])
    # Second order, a Hessian-vector product (forward over reverse).
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k, padding)))
    hvp = lambda conv: jax.jvp(jax.grad(loss(conv), (0, 1)), (x, k), tangents)[1]
    for ours, theirs in zip(hvp(_ours), hvp(_lax)):
      close(ours, theirs)


def test_other_convolutions_are_lax_itself():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 2))
  assert nets._matmul_rule(x, k, (2, 2), "SAME", None, None, NHWC, 1, 1, None) is None
  np.testing.assert_array_equal(_ours(x, k, "SAME", (2, 2)), _lax(x, k, "SAME", (2, 2)))
  nchw = ("NCHW", "OIHW", "NCHW")
  assert nets._matmul_rule(x, k, (1, 1), "SAME", None, None, nchw, 1, 1, None) is None


def test_bfloat16_compute_matches_float32_to_its_precision():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 10, 10, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 2)) * 0.1   # taps
  y = _ours(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), "SAME")
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), _lax(x, k, "SAME"),
                             rtol=0.05, atol=0.05)


def test_conv_module_is_flax_conv_with_the_same_params_and_outputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 16))

  class Net(nn.Module):
    conv: object

    @nn.compact
    def __call__(self, x):
      return self.conv(2, (3, 3))(nn.relu(self.conv(16, (1, 1))(x)))

  ours, flax_net = Net(nets.Conv), Net(nn.Conv)
  params = flax_net.init(jax.random.PRNGKey(1), x)
  assert (jax.tree.structure(ours.init(jax.random.PRNGKey(1), x))
          == jax.tree.structure(params))
  np.testing.assert_allclose(ours.apply(params, x), flax_net.apply(params, x),
                             rtol=1e-5, atol=1e-5)
