"""Times the MNIST VAE's layers one at a time, XLA (jitted) against PyTorch.

    python benchmarks/layer_speed.py [--batch=128] [--repeats=30]

For each of `vae_mnist`'s convolutions and dense layers (the shapes of
configs/vae_mnist.py at batch 128) it times three computations on each side:
the forward pass, the input's gradient and the kernel's gradient, each alone
(jitted on the jax side; torch's `convolution_backward` or the matching
matrix products on the other, channels-last as the twins run). The medians
say which layer, and which of its three terms, a train step's gap to the
PyTorch twin comes from (the stride-1 and dense layers first check that both
sides give the same outputs; for the strided ones torch pads one row and
column more than flax's "SAME", the same work to within a row). jax runs with the XLA CPU setting run.py applies
(jaxgen/xla_cpu.py); `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`
times jaxlib's default (YNNPACK convolutions) instead. Needs CPU torch
(benchmarks/requirements.txt). The ratio is PyTorch's time over jax's, as
in speed.py: above 1.0, jax is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxgen import xla_cpu  # pylint: disable=g-import-not-at-top

xla_cpu.use_fast_cpu_convolutions()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

NHWC = ("NHWC", "HWIO", "NHWC")
# (name, input size, in channels, out channels, stride) of vae_mnist's 3x3
# convolutions; the strided ones pad as flax's "SAME" does for even sizes.
# A train step never takes the gradient of the image, the first layer's input.
FIRST_LAYER = "encoder 1"
CONVS = (
    ("encoder 1", 28, 1, 32, 2),
    ("encoder 2", 14, 32, 64, 2),
    ("decoder 7x7", 7, 64, 128, 1),
    ("decoder 14x14", 14, 32, 32, 1),
    ("decoder out", 14, 32, 4, 1),
)
DENSES = (("encoder dense", 3136, 512), ("decoder dense", 512, 3136),
          ("encoder head", 512, 64))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  fn()
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def jax_terms(layer: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
              kernel: jax.Array, dy: jax.Array, repeats: int) -> list[float]:
  """ms of `layer`'s forward pass, input gradient and kernel gradient, each
  jitted alone (the gradients as vector-Jacobian products with `dy`)."""
  forward = jax.jit(layer)
  input_grad = jax.jit(lambda kernel, dy: jax.vjp(lambda x: layer(x, kernel), x)[1](dy)[0])
  kernel_grad = jax.jit(lambda x, dy: jax.vjp(lambda k: layer(x, k), kernel)[1](dy)[0])
  return [median_ms(lambda: jax.block_until_ready(forward(x, kernel)), repeats),
          median_ms(lambda: jax.block_until_ready(input_grad(kernel, dy)), repeats),
          median_ms(lambda: jax.block_until_ready(kernel_grad(x, dy)), repeats)]


def conv_terms(size: int, c_in: int, c_out: int, stride: int, batch: int,
               repeats: int) -> tuple[list[float], list[float]]:
  """ms of (forward, input gradient, kernel gradient): jax's, then torch's."""
  rng = np.random.default_rng(0)
  out_size = size // stride
  x = jnp.asarray(rng.standard_normal((batch, size, size, c_in)), jnp.float32)
  kernel = jnp.asarray(0.1 * rng.standard_normal((3, 3, c_in, c_out)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((batch, out_size, out_size, c_out)), jnp.float32)
  pads = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                        dimension_numbers=NHWC)

  ours = jax_terms(conv, x, kernel, dy, repeats)

  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  wt = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1).contiguous()
  dyt = torch.from_numpy(np.array(dy)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  # torch pads symmetrically; a strided layer's extra row and column on the
  # high side (flax's SAME) is the same work to within one row.
  args = ([stride, stride], [1, 1], [1, 1], False, [0, 0], 1)

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(dyt, xt, wt, None, *args, mask)

  with torch.no_grad():
    if stride == 1:  # the same padding on both sides: the same outputs
      ours_y = np.asarray(jax.jit(conv)(x, kernel))
      theirs_y = torch.nn.functional.conv2d(xt, wt, padding=1).permute(0, 2, 3, 1).numpy()
      np.testing.assert_allclose(ours_y, theirs_y, rtol=1e-4, atol=1e-4)
    theirs = [median_ms(lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1), repeats),
              median_ms(backward([True, False, False]), repeats),
              median_ms(backward([False, True, False]), repeats)]
  return ours, theirs


def dense_terms(n_in: int, n_out: int, batch: int, repeats: int
                ) -> tuple[list[float], list[float]]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, n_in)), jnp.float32)
  kernel = jnp.asarray(0.01 * rng.standard_normal((n_in, n_out)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((batch, n_out)), jnp.float32)
  ours = jax_terms(jnp.matmul, x, kernel, dy, repeats)
  xt, kt, dyt = (torch.from_numpy(np.array(a)) for a in (x, kernel, dy))
  np.testing.assert_allclose(np.asarray(x @ kernel), (xt @ kt).numpy(),
                             rtol=1e-4, atol=1e-4)
  theirs = [median_ms(lambda: xt @ kt, repeats), median_ms(lambda: dyt @ kt.T, repeats),
            median_ms(lambda: xt.T @ dyt, repeats)]
  return ours, theirs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  floor = jax.jit(lambda a: a + 1.0)
  small = jnp.zeros((8,), jnp.float32)
  floor_ms = median_ms(lambda: jax.block_until_ready(floor(small)), args.repeats)
  print(f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), batch {args.batch}, median of "
        f"{args.repeats}; ms, jax / PyTorch (ratio: PyTorch's time over jax's). "
        f"Each jax time includes one jitted call's dispatch, {floor_ms:.3f} ms "
        f"here, which a train step (one program) does not pay per layer.\n")
  print("| layer | shape | forward | input gradient | kernel gradient | in a train step |")
  print("|---|---|---|---|---|---|")
  rows = [(name, f"3x3 {size}x{size} {c_in}->{c_out}, stride {stride}",
           conv_terms(size, c_in, c_out, stride, args.batch, args.repeats))
          for name, size, c_in, c_out, stride in CONVS]
  rows += [(name, f"{n_in}->{n_out}", dense_terms(n_in, n_out, args.batch, args.repeats))
           for name, n_in, n_out in DENSES]
  total_ours = total_theirs = 0.0
  for name, shape, (ours, theirs) in rows:
    cells = [f"{a:.2f} / {b:.2f} ({b / a:.2f})" for a, b in zip(ours, theirs)]
    if name == FIRST_LAYER:  # its input gradient is not part of a step
      ours, theirs = ours[::2], theirs[::2]
      cells[1] = "not in a step: " + cells[1]
    total_ours, total_theirs = total_ours + sum(ours), total_theirs + sum(theirs)
    cells.append(f"{sum(ours):.2f} / {sum(theirs):.2f} ({sum(theirs) / sum(ours):.2f})")
    print(f"| {name} | {shape} | " + " | ".join(cells) + " |")
  print(f"| all | | | | | {total_ours:.2f} / {total_theirs:.2f} "
        f"({total_theirs / total_ours:.2f}) |")

if __name__ == "__main__":
  main()
