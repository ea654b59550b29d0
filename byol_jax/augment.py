"""BYOL's on-device image augmentations and input normalisation.

Runs inside the compiled update step on crops that the host pipeline made:
random flip, colour jitter (brightness, contrast, saturation, hue in a random
order), grayscale, Gaussian blur and solarisation, each drawn per image, with
one config per view. Semantics follow DeepMind's BYOL reference
(`byol/utils/augmentations.py`); the single-image colour ops equal
`tf.image.adjust_*`.

Everything is branch-free: under `vmap` a `lax.cond` runs both branches
anyway, so every random choice is a `jnp.where` on values that are cheap to
compute, and work that a config switches off is not traced at all.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

# ITU-R 601 luma weights, as in the reference and `tf.image.rgb_to_grayscale`.
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)
# ImageNet per-channel statistics of images in [0, 1], as in the reference.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# Indices of the colour-jitter ops in an `order` vector.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_NUM_JITTER_OPS = 4


def default_view_configs() -> tuple[ml_collections.ConfigDict,
                                    ml_collections.ConfigDict]:
  """The paper's augmentation parameters for view 1 and view 2.

  The views differ only in blur (always on view 1, 10 % on view 2) and
  solarisation (never on view 1, 20 % on view 2).

  Returns:
    (view1, view2) ConfigDicts with the fields `augment_view` reads.
  """

  def view(blur_prob: float, solarize_prob: float):
    return ml_collections.ConfigDict(dict(
        flip=True,
        color_jitter_prob=0.8,
        brightness=0.4,  # additive delta in [-0.4, 0.4]
        contrast=0.4,  # factor in [0.6, 1.4]
        saturation=0.2,  # factor in [0.8, 1.2]
        hue=0.1,  # delta in [-0.1, 0.1], in turns of the colour wheel
        grayscale_prob=0.2,
        blur_prob=blur_prob,
        blur_sigma_min=0.1,  # pixels
        blur_sigma_max=2.0,  # pixels
        blur_kernel_fraction=0.1,  # kernel ~ 10 % of the image height
        solarize_prob=solarize_prob,
        solarize_threshold=0.5,
    ))

  return view(blur_prob=1.0, solarize_prob=0.0), view(blur_prob=0.1,
                                                      solarize_prob=0.2)


def normalize_images(images: jax.Array) -> jax.Array:
  """Standardises channels with ImageNet statistics.

  Args:
    images: f32[..., 3], RGB in [0, 1].

  Returns:
    f32[..., 3], (images - mean) / stddev per channel.
  """
  mean = jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)
  stddev = jnp.asarray(IMAGENET_STDDEV_RGB, jnp.float32)
  return (images - mean) / stddev


# ---------------------------------------------------------------------------
# Single-image ops: image is f32[H, W, 3] in [0, 1] unless stated otherwise.
# ---------------------------------------------------------------------------


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Adds `delta` to every value, unclipped (as `tf.image.adjust_brightness`)."""
  return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each channel's deviation from its spatial mean by `factor`.

  Unclipped, as `tf.image.adjust_contrast`: (x - mean_c) * factor + mean_c,
  where mean_c is channel c's mean over height and width.
  """
  mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
  return (image - mean) * factor + mean


def _adjust_hsv(image: jax.Array, saturation_factor: jax.Array,
                hue_delta: jax.Array) -> jax.Array:
  """Scales HSV saturation (clipped to [0, 1]) and rotates hue by `hue_delta`.

  Same result as TF's RGB -> HSV -> RGB round trip, computed without
  forming saturation or taking a remainder (4x faster on CPU than the
  textbook conversions): with value v
  (max channel) and chroma c (max - min), saturation is c / v, so scaling
  it and clipping to [0, 1] is c' = clip(c * factor, 0, v); each output
  channel is v - c' * w(hue), w the piecewise-linear HSV wheel profile.
  With factor 1 and delta 0 the pixel comes back unchanged up to rounding,
  so one round trip serves either op.

  Args:
    image: f32[H, W, 3] in [0, 1].
    saturation_factor: f32[], >= 0.
    hue_delta: f32[], in turns (1 = the full colour wheel).

  Returns:
    f32[H, W, 3].
  """
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  # Grey pixels (chroma 0) have hue 0; the guard keeps their division finite.
  inv_chroma = 1 / jnp.where(chroma > 0, chroma, 1)
  # Hue in sextants (6 per turn), sector chosen by the max channel, ties
  # broken red, green, blue as TF does.
  hue = jnp.where(
      r == value, (g - b) * inv_chroma,
      jnp.where(g == value, (b - r) * inv_chroma + 2, (r - g) * inv_chroma + 4))
  hue = jnp.where(chroma > 0, hue, 0) + 6 * hue_delta
  new_chroma = jnp.clip(chroma * saturation_factor, 0, value)
  # Branch-free six-sector formula: channel n (5 red, 3 green, 1 blue) sits
  # below the value by chroma * clip(min(k, 4 - k), 0, 1), k = n + hue mod 6.
  k = jnp.asarray([5., 3., 1.]) + hue[..., None]
  k = k - 6 * jnp.floor(k / 6)
  return value[..., None] - new_chroma[..., None] * jnp.clip(
      jnp.minimum(k, 4 - k), 0, 1)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplies HSV saturation by `factor`, clipped to [0, 1] (as TF)."""
  return _adjust_hsv(image, factor, 0.)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotates HSV hue by `delta` turns (1 = full circle), as TF."""
  return _adjust_hsv(image, 1., delta)


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma with `GRAYSCALE_WEIGHTS`, repeated into 3 identical channels."""
  # Elementwise, not a matmul: accelerators may run f32 matmuls in reduced
  # precision by default.
  red, green, blue = GRAYSCALE_WEIGHTS
  luma = red * image[..., 0] + green * image[..., 1] + blue * image[..., 2]
  return jnp.repeat(luma[..., None], 3, axis=-1)


def solarize(image: jax.Array, threshold: float) -> jax.Array:
  """Inverts (1 - x) every value at or above `threshold`."""
  return jnp.where(image < threshold, image, 1 - image)


def blur_kernel_size(image_size: int, fraction: float) -> int:
  """Taps of the blur kernel for an image side of `image_size` pixels.

  As the reference: radius = int(image_size * fraction / 2), taps = 2r + 1;
  23 taps for 224 px at fraction 0.1, 3 taps for 32 px, 1 (no blur) below
  20 px.
  """
  return 2 * int(image_size * fraction / 2) + 1


def blur_kernel(sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Normalised 1-D Gaussian, f32[kernel_size], `sigma` in pixels."""
  if kernel_size % 2 != 1:
    raise ValueError(f'kernel_size must be odd, got {kernel_size}.')
  radius = kernel_size // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-offsets**2 / (2 * sigma**2))
  return weights / jnp.sum(weights)


def _separable_filter(image: jax.Array, kernel: jax.Array) -> jax.Array:
  """Filters width then height with a symmetric 1-D kernel, zero padding.

  Zero ('SAME') padding is the reference's: borders darken a little. A sum
  of shifted copies is several times faster on CPU than a per-image
  depthwise convolution under `vmap`, and is exact for a delta kernel.
  """
  radius = kernel.shape[0] // 2
  for axis in (1, 0):
    size = image.shape[axis]
    padding = [(0, 0)] * image.ndim
    padding[axis] = (radius, radius)
    # Materialised once: fused, the producer would be recomputed per tap.
    padded = jax.lax.optimization_barrier(jnp.pad(image, padding))
    image = sum(
        kernel[i] * jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
        for i in range(kernel.shape[0]))
  return image


def gaussian_blur(image: jax.Array, sigma: jax.Array,
                  kernel_size: int) -> jax.Array:
  """Separable Gaussian blur with zero 'SAME' padding.

  Args:
    image: f32[H, W, C].
    sigma: f32[], the standard deviation in pixels (not the kernel size).
    kernel_size: odd number of taps, e.g. `blur_kernel_size(H, 0.1)`.

  Returns:
    f32[H, W, C].
  """
  return _separable_filter(image, blur_kernel(sigma, kernel_size))


def color_jitter(image: jax.Array, order: jax.Array,
                 brightness_delta: jax.Array, contrast_factor: jax.Array,
                 saturation_factor: jax.Array,
                 hue_delta: jax.Array) -> jax.Array:
  """Applies the four colour ops once each, in `order`, clipping after each.

  Equals applying adjust_{brightness, contrast, saturation, hue} in the
  sequence `order` with a clip to [0, 1] after every op, as the reference
  does, but branch-free and cheap under `vmap`: a 4-way select in each of 4
  slots would compute 16 ops, 8 of them HSV round trips. Here the two HSV
  ops split the sequence into three gaps, and each gap runs the slots
  brightness, contrast, brightness; a slot is an exact identity unless its
  op falls in that gap (brightness takes the slot before contrast when it
  comes first). Cost: 2 HSV round trips, 3 contrast means, 6 additions.

  Args:
    image: f32[H, W, 3] in [0, 1].
    order: int32[4], a permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE
      giving the sequence of application.
    brightness_delta: f32[], added to every value.
    contrast_factor: f32[], scales deviations from each channel's mean.
    saturation_factor: f32[], scales HSV saturation.
    hue_delta: f32[], hue rotation in turns.

  Returns:
    f32[H, W, 3] in [0, 1].
  """
  position = jnp.argsort(order)  # position[op]: when op runs, in 0..3
  brightness_first = position[BRIGHTNESS] < position[CONTRAST]
  saturation_first = position[SATURATION] < position[HUE]

  def gap(op):  # how many HSV ops run before `op`: 0, 1 or 2
    return ((position[SATURATION] < position[op]).astype(jnp.int32) +
            (position[HUE] < position[op]).astype(jnp.int32))

  brightness_gap, contrast_gap = gap(BRIGHTNESS), gap(CONTRAST)

  # An inactive brightness or contrast slot adds 0 or scales by 1 about 0:
  # an exact identity on values in [0, 1]. Each HSV slot runs one of the two
  # HSV ops, with the other op's parameter set to its neutral value.
  def brightness_slot(x, active):
    return jnp.clip(x + jnp.where(active, brightness_delta, 0.), 0, 1)

  def contrast_slot(x, active):
    # Materialise x: otherwise XLA fuses everything since the last
    # materialised value into both the mean and its consumer, recomputing
    # the HSV slots (2.5x slower on CPU).
    x = jax.lax.optimization_barrier(x)
    mean = jnp.where(active, jnp.mean(x, axis=(0, 1)), 0.)
    return jnp.clip((x - mean) * jnp.where(active, contrast_factor, 1.) + mean,
                    0, 1)

  def hsv_slot(x, is_saturation):
    return jnp.clip(
        _adjust_hsv(x, jnp.where(is_saturation, saturation_factor, 1.),
                    jnp.where(is_saturation, 0., hue_delta)), 0, 1)

  x = image
  for g in range(3):
    x = brightness_slot(x, (brightness_gap == g) & brightness_first)
    x = contrast_slot(x, contrast_gap == g)
    x = brightness_slot(x, (brightness_gap == g) & ~brightness_first)
    if g < 2:
      x = hsv_slot(x, saturation_first if g == 0 else ~saturation_first)
  return x


# ---------------------------------------------------------------------------
# Random augmentation of a batch.
# ---------------------------------------------------------------------------


def _symmetric(u: jax.Array, half_width: float, centre: float) -> jax.Array:
  """Maps u ~ U[0, 1) to U[centre - half_width, centre + half_width)."""
  return centre + half_width * (2 * u - 1)


def _augment_image(image: jax.Array, key: jax.Array, config: Any,
                   blur_taps: int) -> jax.Array:
  """One image f32[H, W, 3] in [0, 1] -> its augmented view, same shape."""
  # All random numbers of one image in one draw. Each choice fires when its
  # uniform is < p, so p = 0 never fires and p = 1 always does (the
  # reference's `<=` could fire a p = 0 op with probability 2^-23).
  u = jax.random.uniform(key, (10 + _NUM_JITTER_OPS,))
  (flip_u, jitter_u, gray_u, blur_u, solarize_u, sigma_u, brightness_u,
   contrast_u, saturation_u, hue_u) = [u[i] for i in range(10)]
  order_u = u[10:]

  x = image
  if config.flip:
    x = jnp.where(flip_u < 0.5, x[:, ::-1], x)
  if config.color_jitter_prob > 0:
    jittered = color_jitter(
        x,
        order=jnp.argsort(order_u),  # a uniformly random permutation
        brightness_delta=_symmetric(brightness_u, config.brightness, 0.),
        contrast_factor=_symmetric(contrast_u, config.contrast, 1.),
        saturation_factor=_symmetric(saturation_u, config.saturation, 1.),
        hue_delta=_symmetric(hue_u, config.hue, 0.))
    x = jnp.where(jitter_u < config.color_jitter_prob, jittered, x)
  if config.grayscale_prob > 0:
    x = jnp.where(gray_u < config.grayscale_prob, to_grayscale(x), x)
  x = jnp.clip(x, 0, 1)
  if config.blur_prob > 0 and blur_taps > 1:
    sigma = config.blur_sigma_min + (
        config.blur_sigma_max - config.blur_sigma_min) * sigma_u
    # A delta kernel leaves the image exactly unchanged: selecting the
    # kernel instead of the image saves a full-image select.
    identity = jnp.zeros(blur_taps).at[blur_taps // 2].set(1.)
    kernel = jnp.where(blur_u < config.blur_prob,
                       blur_kernel(sigma, blur_taps), identity)
    x = _separable_filter(x, kernel)
  if config.solarize_prob > 0:
    x = jnp.where(solarize_u < config.solarize_prob,
                  solarize(x, config.solarize_threshold), x)
  return jnp.clip(x, 0, 1)


def augment_view(images: jax.Array, rng: jax.Array, config: Any) -> jax.Array:
  """Augments a batch of crops into one BYOL view, independently per image.

  Order as in the reference: flip -> colour jitter (probability
  `color_jitter_prob`; the four ops in a random order with a clip after
  each) -> grayscale -> clip -> blur (sigma ~ U[min, max) pixels, kernel
  `blur_kernel_size(H, blur_kernel_fraction)` taps) -> solarize -> clip.

  Args:
    images: uint8[B, H, W, 3] (divided by 255) or float[B, H, W, 3] in
      [0, 1] (values outside are clipped first).
    rng: a JAX key; split into one key per image.
    config: an object with the fields of `default_view_configs()`; read at
      trace time, so pass it by closure, not as a traced argument.

  Returns:
    f32[B, H, W, 3] in [0, 1], with gradients stopped.
  """
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.
  else:
    images = jnp.clip(images.astype(jnp.float32), 0, 1)
  blur_taps = blur_kernel_size(images.shape[1], config.blur_kernel_fraction)
  keys = jax.random.split(rng, images.shape[0])
  out = jax.vmap(lambda image, key: _augment_image(image, key, config,
                                                   blur_taps))(images, keys)
  return jax.lax.stop_gradient(out)
