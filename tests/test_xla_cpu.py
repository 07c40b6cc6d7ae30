"""The XLA CPU setting every entry point applies (jaxgen/xla_cpu.py)."""

import jax
import jax.numpy as jnp

from jaxgen import xla_cpu


def test_flag_is_added_to_existing_flags():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.use_fast_cpu_convolutions(environ, jaxlib_version="0.10.2")
  assert environ["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8", xla_cpu.FAST_CONVOLUTIONS]
  empty = {}
  assert xla_cpu.use_fast_cpu_convolutions(empty, jaxlib_version="0.10.2")
  assert empty["XLA_FLAGS"] == xla_cpu.FAST_CONVOLUTIONS


def test_users_own_value_wins_and_is_not_duplicated():
  mine = f"{xla_cpu.YNN_FUSION_FLAG}=dot"
  environ = {"XLA_FLAGS": mine}
  assert not xla_cpu.use_fast_cpu_convolutions(environ, jaxlib_version="0.10.2")
  assert environ["XLA_FLAGS"] == mine
  environ = {"XLA_FLAGS": xla_cpu.FAST_CONVOLUTIONS}
  assert xla_cpu.use_fast_cpu_convolutions(environ, jaxlib_version="0.10.2")
  assert environ["XLA_FLAGS"] == xla_cpu.FAST_CONVOLUTIONS


def test_unchecked_jaxlib_gets_no_flag():
  # An XLA that does not know the flag would abort on it.
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert not xla_cpu.use_fast_cpu_convolutions(environ, jaxlib_version="0.11.0")
  assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"


def test_filter_gradient_runs_as_xla_convolution_in_this_process():
  # conftest applied the flag as run.py does. With jaxlib's default, both
  # convolutions of this gradient sit inside YNN fusions (the slow filter
  # gradient); with the flag they are plain convolution instructions.
  x_BHWC = jnp.ones((8, 14, 14, 32))
  w_HWIO = jnp.ones((3, 3, 32, 32))

  def loss(w):
    y = jax.lax.conv_general_dilated(x_BHWC, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y ** 2)

  hlo = jax.jit(jax.grad(loss)).lower(w_HWIO).compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  assert entry.count(" convolution(") == 2, hlo
