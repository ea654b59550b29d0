"""Host-side geometric image ops: random resized crop, centre crop, resize.

All randomness is stateless (`seed`: int32/int64[2] tensor), so a crop is a
pure function of the image and its seed and tf.data may run them in parallel
without changing results. Images go in and come out as uint8 [H, W, 3].
"""

import math

import tensorflow as tf


def sample_crop_window(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                       area_range: tuple[float, float],
                       aspect_range: tuple[float, float]) -> tf.Tensor:
  """Draws a random crop window the way the reference does.

  The target area fraction is uniform in `area_range`, the aspect ratio
  (width / height) log-uniform in `aspect_range`; the window's sides are
  rounded and then clipped to the image (one draw, no rejection, as in the
  reference's `_decode_and_random_crop`), and its position is uniform.

  Args:
    seed: int[2] stateless seed.
    height, width: int32 scalars, the image size in pixels.
    area_range: (min, max) fraction of the image area.
    aspect_range: (min, max) ratio width / height.

  Returns:
    int32[4]: (offset_height, offset_width, crop_height, crop_width), pixels.
  """
  area_seed, aspect_seed, top_seed, left_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  area = tf.cast(height * width, tf.float32) * tf.random.stateless_uniform(
      [], area_seed, *area_range)
  aspect = tf.exp(tf.random.stateless_uniform(
      [], aspect_seed, math.log(aspect_range[0]), math.log(aspect_range[1])))
  # At least one pixel, so tiny images cannot produce an empty crop.
  crop_w = tf.clip_by_value(
      tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, width)
  crop_h = tf.clip_by_value(
      tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, height)
  top = tf.random.stateless_uniform([], top_seed, 0, height - crop_h + 1,
                                    dtype=tf.int32)
  left = tf.random.stateless_uniform([], left_seed, 0, width - crop_w + 1,
                                     dtype=tf.int32)
  return tf.stack([top, left, crop_h, crop_w])


def resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to uint8[size, size, 3], as the reference resizes.

  Bicubic overshoots the input range; the reference clips the result to
  [0, 1] after scaling by 1/255, which is the same as clipping to [0, 255]
  here. Rounding (rather than truncating) keeps the mean brightness.
  """
  resized = tf.image.resize(image, [size, size],
                            method=tf.image.ResizeMethod.BICUBIC)
  return tf.saturate_cast(tf.round(resized), tf.uint8)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                        area_range: tuple[float, float],
                        aspect_range: tuple[float, float]) -> tf.Tensor:
  """uint8[H, W, 3] -> uint8[size, size, 3]: random crop, bicubic resize."""
  shape = tf.shape(image)
  top, left, crop_h, crop_w = tf.unstack(sample_crop_window(
      seed, shape[0], shape[1], area_range, aspect_range))
  crop = tf.image.crop_to_bounding_box(image, top, left, crop_h, crop_w)
  return resize_uint8(crop, size)


def center_crop(image: tf.Tensor, size: int, crop_fraction: float) -> tf.Tensor:
  """uint8[H, W, 3] -> uint8[size, size, 3]: central square, bicubic resize.

  The square's side is `crop_fraction` of the shorter side, rounded down,
  centred with the reference's rounding (e.g. 224/256 for ImageNet; 1.0 keeps
  the whole shorter side, for tiny images).
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32),
                 tf.int32)
  side = tf.maximum(side, 1)
  top = (height - side + 1) // 2
  left = (width - side + 1) // 2
  crop = tf.image.crop_to_bounding_box(image, top, left, side, side)
  return resize_uint8(crop, size)
