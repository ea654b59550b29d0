"""A bias-free 2-D convolution that runs as patches × matmul on CPUs.

XLA:CPU's convolution kernels, and above all their gradients, reach a small
fraction of the machine's matmul speed on ResNet layers: few-channel layers
run at 10-15 GFLOP/s, a 3×3 convolution on a 2×2 map at about 1 GFLOP/s,
while a matmul of the same work runs at 100+ GFLOP/s. On the CPU backend, for the
shapes where that pays (1x1 kernels and small output maps, see
`use_patches`), this module therefore gathers the k×k shifted (and strided)
copies of the padded input into one patch tensor and multiplies it by the
kernel reshaped to a matrix; the gradients are a matmul plus cheap slices.
Elsewhere, and always on GPU and TPU, it calls XLA's native convolution.

Either way it computes the same function as `hk.Conv2D(..., with_bias=False,
padding='SAME')` with the same parameter (`w`, [k, k, C_in, C_out], Haiku's
default initialiser), so checkpoints and parameter paths do not depend on the
backend a run was trained on.
"""

import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow/XLA 'SAME' padding (before, after) of one spatial axis."""
  output = -(-size // stride)
  total = max((output - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def patches_conv(inputs: jax.Array, kernel: jax.Array,
                 stride: int) -> jax.Array:
  """'SAME' convolution as one matmul over gathered patches.

  Args:
    inputs: f[B, H, W, C_in].
    kernel: f[k, k, C_in, C_out] (square kernel).
    stride: the same along both spatial axes.

  Returns:
    f[B, ceil(H / stride), ceil(W / stride), C_out], equal to
    `lax.conv_general_dilated(inputs, kernel, (stride,)*2, 'SAME', NHWC/HWIO)`
    up to float summation order.
  """
  size, _, in_channels, out_channels = kernel.shape
  _, height, width, _ = inputs.shape
  pad_h = same_padding(height, size, stride)
  pad_w = same_padding(width, size, stride)
  out_h = -(-height // stride)
  out_w = -(-width // stride)
  if size == 1 and pad_h == pad_w == (0, 0):
    patches = inputs[:, ::stride, ::stride, :]
  else:
    padded = jnp.pad(inputs, ((0, 0), pad_h, pad_w, (0, 0)))
    # Tap (i, j) of every output pixel: a strided slice of the padded input.
    # Concatenated in (i, j, c) order, matching the kernel's reshape below.
    patches = jnp.concatenate([
        jax.lax.slice(padded, (0, i, j, 0),
                      (padded.shape[0], i + (out_h - 1) * stride + 1,
                       j + (out_w - 1) * stride + 1, in_channels),
                      (1, stride, stride, 1))
        for i in range(size) for j in range(size)], axis=-1)
  matrix = kernel.reshape(size * size * in_channels, out_channels)
  return jnp.einsum('bhwk,ko->bhwo', patches, matrix)


# 'auto' (see `use_patches`), 'patches' or 'xla'; read when a network is
# traced. For benchmarks and equality tests, not for configs: the choice
# changes speed, not results.
IMPLEMENTATION_ENV = 'BYOL_JAX_CONV'
IMPLEMENTATIONS = ('auto', 'patches', 'xla')

# On CPU, the patches path wins where XLA's kernels are weakest and loses
# where gathering k*k copies of a large map costs more than it saves
# (fwd + bwd, measured side by side on 2 cores; ratio = XLA time / ours):
#   3x3 on 2x2 maps, 512 ch: 66x     3x3 on 4x4 maps, 256 ch: 1.7x
#   3x3 stride 2 to 4x4 maps: 1.6x   1x1 (a plain matmul): 1.2-1.8x
#   3x3 on 8x8 maps, 128 ch: 0.9x    3x3 on 16x16 or 32x32 maps: 0.25-0.5x
# so it takes 1x1 convolutions and those whose output has at most 4x4
# pixels (the last stages of a ResNet at 64 px).
_MAX_PATCHES_OUTPUT_PIXELS = 16


def use_patches(kernel: int, output_pixels: int) -> bool:
  """Whether a convolution takes the patches path (see IMPLEMENTATION_ENV).

  Args:
    kernel: the side of the square kernel.
    output_pixels: height x width of the output map.
  """
  choice = os.environ.get(IMPLEMENTATION_ENV, 'auto')
  if choice not in IMPLEMENTATIONS:
    raise ValueError(f'{IMPLEMENTATION_ENV}={choice!r}; use one of '
                     f'{", ".join(IMPLEMENTATIONS)}')
  if choice != 'auto':
    return choice == 'patches'
  return jax.default_backend() == 'cpu' and (
      kernel == 1 or output_pixels <= _MAX_PATCHES_OUTPUT_PIXELS)


class Conv2D(hk.Module):
  """Square-kernel, bias-free 'SAME' convolution, NHWC (see module docstring).

  Module and parameter names are those of `hk.Conv2D`: a module named
  `conv_0` owns `conv_0/w`.
  """

  def __init__(self, output_channels: int, kernel_shape: int, stride: int = 1,
               name: str | None = None):
    super().__init__(name=name)
    self._output_channels = output_channels
    self._kernel = kernel_shape
    self._stride = stride

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """f[B, H, W, C_in] -> f[B, ceil(H/stride), ceil(W/stride), C_out]."""
    in_channels = inputs.shape[-1]
    shape = (self._kernel, self._kernel, in_channels, self._output_channels)
    # Haiku's default for convolutions: truncated normal, 1/sqrt(fan_in).
    stddev = 1. / np.sqrt(np.prod(shape[:-1]))
    kernel = hk.get_parameter(
        'w', shape, inputs.dtype,
        init=hk.initializers.TruncatedNormal(stddev=stddev))
    output_pixels = (-(-inputs.shape[1] // self._stride) *
                     -(-inputs.shape[2] // self._stride))
    if use_patches(self._kernel, output_pixels):
      return patches_conv(inputs, kernel.astype(inputs.dtype), self._stride)
    return jax.lax.conv_general_dilated(
        inputs, kernel.astype(inputs.dtype),
        window_strides=(self._stride, self._stride), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
