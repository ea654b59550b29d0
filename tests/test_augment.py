"""Tests of byol_jax.augment: TF-equal colour ops, blur, and random views."""

import colorsys
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from byol_jax import augment

# 2-core CI machines: keep images small and batches moderate.
_SIDE = 16


def _random_image(seed: int, side: int = _SIDE) -> np.ndarray:
  """f32[side, side, 3] in [0, 1], with grey, black, white and tied pixels."""
  image = np.random.default_rng(seed).uniform(size=(side, side, 3))
  image[0, :6] = [[.5, .5, .5], [0, 0, 0], [1, 1, 1], [1, 0, 0], [.2, .9, .9],
                  [.7, .7, .1]]
  return image.astype(np.float32)


def _config(**overrides):
  """View-2 config with every random op switched off unless overridden."""
  config = augment.default_view_configs()[1]
  config.update(flip=False, color_jitter_prob=0., grayscale_prob=0.,
                blur_prob=0., solarize_prob=0.)
  config.update(overrides)
  return config


def _augment(images, config, seed=0):
  return np.asarray(
      jax.jit(lambda x: augment.augment_view(x, jax.random.key(seed), config))(
          images))


# --- Single-image ops against TensorFlow. ----------------------------------


@pytest.mark.parametrize('delta', [-0.4, -0.05, 0., 0.3])
def test_brightness_and_hue_match_tf(delta):
  image = _random_image(0)
  np.testing.assert_allclose(
      augment.adjust_brightness(image, delta),
      tf.image.adjust_brightness(image, delta), atol=1e-5)
  np.testing.assert_allclose(
      augment.adjust_hue(image, delta), tf.image.adjust_hue(image, delta),
      atol=1e-5)


@pytest.mark.parametrize('factor', [0., 0.6, 1.0, 1.25, 1.4])
def test_contrast_and_saturation_match_tf(factor):
  image = _random_image(1)
  np.testing.assert_allclose(
      augment.adjust_contrast(image, factor),
      tf.image.adjust_contrast(image, factor), atol=1e-5)
  np.testing.assert_allclose(
      augment.adjust_saturation(image, factor),
      tf.image.adjust_saturation(image, factor), atol=1e-5)


def test_grayscale_uses_reference_weights():
  image = _random_image(2)
  gray = np.asarray(augment.to_grayscale(image))
  expected = image @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  np.testing.assert_allclose(gray, np.stack([expected] * 3, -1), atol=1e-6)
  np.testing.assert_allclose(gray[..., :1], tf.image.rgb_to_grayscale(image),
                             atol=1e-6)


def test_solarize_inverts_values_at_or_above_threshold():
  image = np.array([0., 0.2, 0.49, 0.5, 0.8, 1.], np.float32).reshape(1, 2, 3)
  np.testing.assert_allclose(
      augment.solarize(image, 0.5),
      np.array([0., 0.2, 0.49, 0.5, 0.2, 0.]).reshape(1, 2, 3), atol=1e-7)


def test_normalize_images_uses_imagenet_statistics():
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  stddev = np.array([0.229, 0.224, 0.225], np.float32)
  images = np.stack([np.broadcast_to(mean, (2, 2, 3)),
                     np.broadcast_to(mean + stddev, (2, 2, 3))])
  out = np.asarray(augment.normalize_images(images))
  np.testing.assert_allclose(out[0], 0., atol=1e-6)
  np.testing.assert_allclose(out[1], 1., atol=1e-6)


# --- Blur. ----------------------------------------------------------------


def test_blur_kernel_size_follows_reference_rule():
  # radius = int(side * 0.1 / 2): 224 px -> 11 -> 23 taps.
  assert augment.blur_kernel_size(224, 0.1) == 23
  assert augment.blur_kernel_size(32, 0.1) == 3
  assert augment.blur_kernel_size(19, 0.1) == 1
  with pytest.raises(ValueError):
    augment.blur_kernel(1., 4)


def test_blur_kernel_is_normalised_gaussian():
  sigma = 1.7
  offsets = np.arange(-11, 12)
  expected = np.exp(-offsets**2 / (2 * sigma**2))
  expected /= expected.sum()
  kernel = np.asarray(augment.blur_kernel(sigma, 23))
  np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-8)
  assert kernel.sum() == pytest.approx(1., abs=1e-6)


def test_gaussian_blur_matches_tf_depthwise_same_padding():
  image = _random_image(3, side=20)
  kernel = np.asarray(augment.blur_kernel(1.3, 5))
  horizontal = np.tile(kernel.reshape(1, 5, 1, 1), (1, 1, 3, 1))
  expected = tf.nn.depthwise_conv2d(image[None], horizontal, [1, 1, 1, 1],
                                    'SAME')
  expected = tf.nn.depthwise_conv2d(expected, horizontal.reshape(5, 1, 3, 1),
                                    [1, 1, 1, 1], 'SAME')[0]
  np.testing.assert_allclose(
      augment.gaussian_blur(image, 1.3, 5), expected, atol=1e-6)


def test_blur_keeps_constant_image_inside_and_darkens_border():
  image = np.full((20, 20, 3), 0.6, np.float32)
  blurred = np.asarray(augment.gaussian_blur(image, 2., 7))
  np.testing.assert_allclose(blurred[3:-3, 3:-3], 0.6, atol=1e-6)
  # Zero 'SAME' padding, as the reference: the outermost pixels lose mass.
  assert (blurred[0] < 0.59).all() and (blurred[:, -1] < 0.59).all()


# --- Colour jitter in random order. ---------------------------------------


def _sequential_jitter(image, order, params):
  ops = {
      augment.BRIGHTNESS: augment.adjust_brightness,
      augment.CONTRAST: augment.adjust_contrast,
      augment.SATURATION: augment.adjust_saturation,
      augment.HUE: augment.adjust_hue,
  }
  for op in order:
    image = jnp.clip(ops[op](image, params[op]), 0., 1.)
  return image


def test_color_jitter_equals_ops_in_every_order():
  image = _random_image(4, side=8)
  # Strong factors so that clipping between ops matters.
  params = {augment.BRIGHTNESS: 0.35, augment.CONTRAST: 1.4,
            augment.SATURATION: 0.7, augment.HUE: -0.08}
  orders = np.array(list(itertools.permutations(range(4))), np.int32)
  jittered = jax.jit(jax.vmap(
      lambda order: augment.color_jitter(
          image, order, params[augment.BRIGHTNESS], params[augment.CONTRAST],
          params[augment.SATURATION], params[augment.HUE])))(orders)
  results = []
  for order, out in zip(orders, np.asarray(jittered)):
    expected = np.asarray(_sequential_jitter(image, order, params))
    np.testing.assert_allclose(out, expected, atol=1e-5, err_msg=str(order))
    results.append(out)
  # The order matters, so the test could tell a wrong order apart.
  assert len({r.tobytes() for r in np.round(np.stack(results), 4)}) > 12


# --- Random views. ----------------------------------------------------------


def test_default_view_configs_have_paper_values():
  view1, view2 = augment.default_view_configs()
  for view in (view1, view2):
    assert view.flip and view.color_jitter_prob == 0.8
    assert (view.brightness, view.contrast, view.saturation,
            view.hue) == (0.4, 0.4, 0.2, 0.1)
    assert view.grayscale_prob == 0.2
    assert (view.blur_sigma_min, view.blur_sigma_max) == (0.1, 2.0)
  assert (view1.blur_prob, view1.solarize_prob) == (1.0, 0.0)
  assert (view2.blur_prob, view2.solarize_prob) == (0.1, 0.2)


def test_all_probabilities_zero_gives_input_over_255():
  images = np.random.default_rng(5).integers(0, 256, (4, _SIDE, _SIDE, 3),
                                             dtype=np.uint8)
  out = _augment(images, _config())
  assert out.dtype == np.float32
  # XLA may multiply by 1/255 instead of dividing: equal to within an ulp.
  np.testing.assert_allclose(out, images / 255., rtol=2e-7, atol=0)


def test_flip_mirrors_about_half_of_the_images():
  images = np.broadcast_to(_random_image(6), (400, _SIDE, _SIDE, 3))
  out = _augment(images, _config(flip=True))
  mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  unchanged = np.all(out == images, axis=(1, 2, 3))
  assert np.all(mirrored ^ unchanged)
  assert mirrored.mean() == pytest.approx(0.5, abs=0.08)


def test_views_are_random_per_image_and_in_range():
  images = np.broadcast_to(_random_image(7, side=32), (8, 32, 32, 3))
  for config in augment.default_view_configs():
    out = _augment(images, config)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0. and out.max() <= 1.
    distinct = {np.round(o, 5).tobytes() for o in out}
    assert len(distinct) == len(out)


def test_measured_probabilities_match_config():
  n = 2000
  colour = np.broadcast_to(_random_image(8), (n, _SIDE, _SIDE, 3))

  def changed(out, images):
    return np.abs(out - images).max(axis=(1, 2, 3)) > 1e-4

  out = _augment(colour, _config(color_jitter_prob=0.8))
  assert changed(out, colour).mean() == pytest.approx(0.8, abs=0.04)

  out = _augment(colour, _config(grayscale_prob=0.2))
  gray = np.all(out == out[..., :1], axis=(1, 2, 3))
  assert gray.mean() == pytest.approx(0.2, abs=0.04)
  np.testing.assert_array_equal(gray, changed(out, colour))

  # A fixed sigma of 1 px: a tiny sigma's blur would be invisible.
  for prob in (0.1, 1.0):
    out = _augment(colour, _config(blur_prob=prob, blur_kernel_fraction=0.25,
                                   blur_sigma_min=1., blur_sigma_max=1.))
    blurred = changed(out, colour)
    assert blurred.mean() == pytest.approx(prob, abs=0.04)
    # Unblurred images went through a delta kernel: exactly unchanged.
    np.testing.assert_array_equal(out[~blurred], colour[~blurred])

  bright = np.full((n, 4, 4, 3), 0.75, np.float32)
  out = _augment(bright, _config(solarize_prob=0.2))
  solarized = np.all(np.abs(out - 0.25) < 1e-6, axis=(1, 2, 3))
  assert solarized.mean() == pytest.approx(0.2, abs=0.04)
  np.testing.assert_array_equal(solarized, changed(out, bright))


def test_blur_sigma_is_drawn_uniformly_over_its_range():
  """σ read back from each blurred impulse: k(1)/k(0) = exp(−1/(2σ²))."""
  n, side, centre = 2000, 16, 8
  impulse = np.zeros((n, side, side, 3), np.float32)
  impulse[:, centre, centre] = 1.
  out = _augment(impulse, _config(blur_prob=1., blur_kernel_fraction=0.25))
  ratio = out[:, centre, centre + 1, 0] / out[:, centre, centre, 0]
  sigma = np.sqrt(-1 / (2 * np.log(ratio.astype(np.float64))))
  assert 0.1 - 1e-3 <= sigma.min() < 0.12
  assert 1.98 < sigma.max() <= 2.0 + 1e-3
  # U[0.1, 2]: mean 1.05, standard error 0.55/√n ≈ 0.012.
  assert sigma.mean() == pytest.approx(1.05, abs=0.04)
  assert np.histogram(sigma, bins=4, range=(0.1, 2.0))[0].min() > 0.2 * n


def test_blur_at_224_px_spans_23_taps():
  image = np.zeros((1, 224, 224, 3), np.float32)
  image[0, 112, 112] = 1.
  out = _augment(image, _config(blur_prob=1., blur_sigma_min=2.,
                                blur_sigma_max=2.))
  support = np.flatnonzero(out[0, 112, :, 0])
  assert (support.min(), support.max()) == (112 - 11, 112 + 11)
  # The row through the centre is the analytic Gaussian, normalised.
  row = out[0, 112, 101:124, 0]
  expected = np.exp(-np.arange(-11, 12)**2 / (2 * 2.**2))
  np.testing.assert_allclose(row / row.sum(), expected / expected.sum(),
                             rtol=1e-5)


def _jitter_only(images, **strengths):
  """Runs the jitter (always on) with only the given strengths nonzero."""
  config = _config(color_jitter_prob=1., brightness=0., contrast=0.,
                   saturation=0., hue=0.)
  config.update(strengths)
  return _augment(images, config)


def test_jitter_strengths_are_sampled_over_their_ranges():
  n = 500
  pixel = np.array([0.6, 0.4, 0.3], np.float32)  # hue 1/18, saturation 0.5
  colour = np.broadcast_to(pixel, (n, 2, 2, 3))

  delta = _jitter_only(np.full((n, 2, 2, 3), 0.5, np.float32),
                       brightness=0.4)[:, 0, 0, 0] - 0.5
  assert -0.4 <= delta.min() < -0.35 and 0.35 < delta.max() <= 0.4

  # Two grey levels 0.4 and 0.6: the spread scales by the contrast factor.
  halves = np.concatenate([np.full((n, 1, 2, 3), 0.4, np.float32),
                           np.full((n, 1, 2, 3), 0.6, np.float32)], axis=1)
  out = _jitter_only(halves, contrast=0.4)
  factor = (out[:, 1, 0, 0] - out[:, 0, 0, 0]) / 0.2
  assert 0.6 - 1e-5 <= factor.min() < 0.65 and 1.35 < factor.max() <= 1.4 + 1e-5

  out = _jitter_only(colour, saturation=0.2)[:, 0, 0]
  ratio = np.array([colorsys.rgb_to_hsv(*p)[1] for p in out]) / 0.5
  assert 0.8 - 1e-5 <= ratio.min() < 0.82 and 1.18 < ratio.max() <= 1.2 + 1e-5

  out = _jitter_only(colour, hue=0.1)[:, 0, 0]
  shift = np.array([colorsys.rgb_to_hsv(*p)[0] for p in out]) - 1 / 18
  shift = (shift + 0.5) % 1 - 0.5
  assert -0.1 - 1e-5 <= shift.min() < -0.09 and 0.09 < shift.max() <= 0.1 + 1e-5


def test_augment_view_runs_under_pmap_as_under_jit():
  devices = jax.local_device_count()
  assert devices == 4
  images = np.broadcast_to(_random_image(9), (devices, 3, _SIDE, _SIDE, 3))
  images = (images * 255).astype(np.uint8)
  keys = jax.random.split(jax.random.key(1), devices)
  view1, _ = augment.default_view_configs()
  out = jax.pmap(lambda x, key: augment.augment_view(x, key, view1))(images,
                                                                     keys)
  assert out.shape == images.shape
  jitted = jax.jit(lambda x, key: augment.augment_view(x, key, view1))
  for i in range(devices):
    np.testing.assert_allclose(out[i], jitted(images[i], keys[i]), atol=1e-6)
  # Each device has its own key, so the shards differ.
  assert not np.allclose(out[0], out[1])
