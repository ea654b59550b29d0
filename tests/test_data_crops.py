"""Crop geometry: the reference's window distribution, centring, resizing."""

import math

import numpy as np
import pytest
import tensorflow as tf

from byol_jax.data import crops

AREA = (0.08, 1.0)
ASPECT = (3 / 4, 4 / 3)


def _windows(height, width, num_draws, area=AREA, aspect=ASPECT):
  """int[num_draws, 4] windows (top, left, h, w) drawn with seeds [i, 7]."""
  seeds = tf.stack([tf.range(num_draws, dtype=tf.int64),
                    tf.fill([num_draws], tf.constant(7, tf.int64))], axis=1)
  draw = tf.autograph.experimental.do_not_convert(
      lambda seed: crops.sample_crop_window(seed, height, width, area, aspect))
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(draw).batch(num_draws)
  return next(iter(ds)).numpy()


def test_crop_window_area_and_aspect_follow_the_reference():
  # A large image, so that rounding to whole pixels barely moves the ratios.
  size = 1000
  top, left, h, w = _windows(size, size, 4000).T
  area = h * w / size**2
  log_aspect = np.log(w / h)
  tolerance = 2e-3  # from rounding the sides to pixels
  assert area.min() >= AREA[0] - tolerance and area.max() <= 1.0
  assert log_aspect.min() >= math.log(ASPECT[0]) - tolerance
  assert log_aspect.max() <= math.log(ASPECT[1]) + tolerance
  # The ranges are used in full, not just respected.
  assert area.min() < 0.1 and area.max() > 0.97
  assert log_aspect.min() < math.log(ASPECT[0]) + 0.02
  assert log_aspect.max() > math.log(ASPECT[1]) - 0.02
  # Log-uniform aspect: symmetric around ratio 1. Uniform area: mean 0.54,
  # slightly less because windows wider or taller than the image are clipped.
  assert abs(np.median(log_aspect)) < 0.02
  assert 0.50 < area.mean() < 0.55
  # Windows lie inside the image, uniformly over the free room.
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= size).all() and (left + w <= size).all()
  for offset, room in ((top, size - h), (left, size - w)):
    relative = offset[room > 100] / room[room > 100]
    assert relative.min() < 0.02 and relative.max() > 0.98
    assert abs(relative.mean() - 0.5) < 0.03


def test_crop_window_on_a_tiny_image_is_never_empty():
  top, left, h, w = _windows(3, 5, 500).T
  assert (h >= 1).all() and (w >= 1).all()
  assert (top + h <= 3).all() and (left + w <= 5).all()


def test_crop_window_is_a_pure_function_of_its_seed():
  seed = tf.constant([3, 4], tf.int64)
  first = crops.sample_crop_window(seed, 50, 40, AREA, ASPECT).numpy()
  again = crops.sample_crop_window(seed, 50, 40, AREA, ASPECT).numpy()
  other = crops.sample_crop_window(seed + 1, 50, 40, AREA, ASPECT).numpy()
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_random_resized_crop_is_the_window_resized():
  image = tf.constant(np.random.default_rng(0).integers(
      0, 256, (30, 40, 3), dtype=np.uint8))
  seed = tf.constant([5, 6], tf.int64)
  top, left, h, w = crops.sample_crop_window(seed, 30, 40, AREA, ASPECT)
  expected = crops.resize_uint8(image[top:top + h, left:left + w], 16)
  got = crops.random_resized_crop(image, seed, 16, AREA, ASPECT)
  assert got.dtype == tf.uint8 and got.shape == (16, 16, 3)
  np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_resize_clips_bicubic_overshoot_instead_of_wrapping():
  # A hard 0 -> 255 edge: bicubic rings below 0 and above 255 next to it.
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, 4:] = 255
  exact = tf.image.resize(image, [20, 20], method='bicubic').numpy()
  assert exact.min() < -1 and exact.max() > 256  # there is overshoot to clip
  got = crops.resize_uint8(tf.constant(image), 20).numpy()
  np.testing.assert_array_equal(got, np.clip(np.round(exact), 0, 255))


@pytest.mark.parametrize('height,width,fraction,side,top,left', [
    (10, 6, 1.0, 6, 2, 0),     # whole shorter side, centred on the longer
    (8, 8, 0.5, 4, 2, 2),
    (9, 9, 224 / 256, 7, 1, 1),  # int(7.875) = 7; (9 - 7 + 1) // 2 = 1
])
def test_center_crop_takes_the_reference_window(height, width, fraction, side,
                                                top, left):
  image = np.arange(height * width * 3, dtype=np.uint8).reshape(
      height, width, 3)
  got = crops.center_crop(tf.constant(image), side, fraction).numpy()
  # Resizing to the window's own size is the identity.
  np.testing.assert_array_equal(got, image[top:top + side, left:left + side])
