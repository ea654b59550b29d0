"""Host batches for pretraining, linear training and evaluation.

Every batch is a dict of numpy arrays whose leading two axes are
[num_local_devices, per_device], ready for `device_feed.prefetch_to_devices`.
Images are uint8 RGB; flips (pretraining) and colour ops run on the device.

An image that fails to decode inside tf.data (a truncated JPEG of an image
folder) stops the stream with a DatasetError that names the file.

Training streams are pure functions of (dataset, seed, process, step): each
epoch is a stateless permutation seeded by (seed, epoch) and each example's
crops are seeded by (seed, epoch, position in the epoch). Nothing depends on
TensorFlow's global seed or on thread timing, so `start_step=k` reproduces
exactly the batches a run from step 0 yields from step k on.
"""

from collections.abc import Iterator
import math

import numpy as np
import tensorflow as tf

from byol_jax import parallel
from byol_jax.data import crops
from byol_jax.data import sources

# Distinct streams of randomness per pipeline, so that pretraining and linear
# training with the same seed do not share crops.
_PRETRAIN_STREAM = 0
_LINEAR_TRAIN_STREAM = 1

# Examples permuted together in one epoch: a full shuffle for datasets up to
# this size (Fashion-MNIST, CIFAR). Larger shards are permuted block by
# block; TFDS stores examples in a shuffled order and an image folder is
# listed in one (image_folder.py), so blocks are already mixed. Blocks hold
# encoded images (ImageNet: ~110 kB each).
DEFAULT_SHUFFLE_WINDOW = 50_000

# Shards whose decoded images take at most this many bytes are cached in
# host memory after the first epoch (Fashion-MNIST: 141 MB, CIFAR: 154 MB).
_IN_MEMORY_BYTES = 1 << 30


def _fold_in(key: tf.Tensor, data) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(key, data)


def _parallel_map(ds: tf.data.Dataset, fn) -> tf.data.Dataset:
  """Order-preserving parallel map of a plain-TF function.

  Our functions have no Python control flow on tensors, so AutoGraph's
  source rewriting (slow, and noisy on Python 3.13) is skipped.
  """
  return ds.map(tf.autograph.experimental.do_not_convert(fn),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _shuffled_stream(examples: tf.data.Dataset, num_examples: int,
                     key: tf.Tensor, start_example: int,
                     shuffle_window: int) -> tf.data.Dataset:
  """Endless epochs of `examples`, each permuted, from `start_example` on.

  Args:
    examples: one pass over this process's shard, in a fixed order.
    num_examples: its length (> 0).
    key: int64[2] seed of this stream.
    start_example: how many elements of the endless stream to skip.
    shuffle_window: examples permuted together.

  Returns:
    Dataset of (example seed int64[2], *example).
  """
  first_epoch, skip = divmod(start_example, num_examples)

  def epoch(index):
    shuffle_key, example_key = tf.unstack(
        tf.random.experimental.stateless_split(_fold_in(key, index), num=2))

    def permute(block_index, block):
      order = tf.random.experimental.stateless_shuffle(
          tf.range(tf.shape(block[-1])[0]), _fold_in(shuffle_key, block_index))
      return tuple(tf.gather(x, order) for x in block)

    blocks = _parallel_map(examples.batch(shuffle_window).enumerate(),
                           permute)
    return _parallel_map(
        blocks.unbatch().enumerate(),
        lambda position, example: (_fold_in(example_key, position), *example))

  # Skipping happens before decoding, so resuming costs reading, not decoding.
  # (Each epoch's first block is read when the epoch starts: with a block of
  # encoded ImageNet images that is a pause of seconds once per epoch.)
  return tf.data.Dataset.counter(first_epoch).flat_map(
      tf.autograph.experimental.do_not_convert(epoch)).skip(skip)


def _train_stream(name: str, split: str, *, data_dir: str,
                  fashion_mnist_dir: str, process_index: int,
                  process_count: int, seed: int, stream: int,
                  start_example: int, shuffle_window: int) -> tf.data.Dataset:
  """Endless shuffled (example seed int64[2], image uint8[H, W, 3], label)."""
  shard_size = sources.num_examples(
      name, split, data_dir, fashion_mnist_dir=fashion_mnist_dir,
      process_index=process_index, process_count=process_count)
  if shard_size == 0:
    raise ValueError(f'process {process_index} of {process_count} has no '
                     f'examples of {name} {split}')
  height, width = sources.dataset_spec(
      name, data_dir, fashion_mnist_dir=fashion_mnist_dir).image_shape[:2]
  # Small datasets are decoded once and kept in memory; large ones are
  # shuffled encoded and decoded after skipping, so resuming costs no decode.
  in_memory = (height is not None and width is not None
               and shard_size * height * width * 3 <= _IN_MEMORY_BYTES)
  examples = sources.load_split(
      name, split, data_dir, fashion_mnist_dir=fashion_mnist_dir,
      process_index=process_index, process_count=process_count,
      shuffle_files=False, seed=seed, decode=in_memory)
  if in_memory:
    examples = examples.cache()
  key = _fold_in(tf.constant([seed, stream], tf.int64), process_index)
  ds = _shuffled_stream(examples, shard_size, key, start_example,
                        shuffle_window)
  if in_memory:
    return ds
  return _parallel_map(ds, lambda k, encoded, label: (
      k, sources.decode_rgb(encoded), label))


def _naming_undecodable_files(
    batches: Iterator[dict[str, np.ndarray]], name: str, split: str,
    data_dir: str | None, process_index: int, process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """`batches`, where a decode error becomes a DatasetError naming the file.

  tf.data's InvalidArgumentError says only that decoding failed; the shard's
  images are then decoded one by one to find which did
  (sources.check_decodable). If none fails, or the dataset is not an image
  folder, the original error is raised.
  """
  try:
    yield from batches
  except tf.errors.InvalidArgumentError:
    sources.check_decodable(name, split, data_dir,
                            process_index=process_index,
                            process_count=process_count)
    raise


def _to_numpy_batches(
    ds: tf.data.Dataset, per_device: int, num_local_devices: int, *,
    name: str, split: str, data_dir: str | None, process_index: int,
    process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Device-shaped numpy batches of `ds`, which reads `split` of `name`.

  The remaining arguments say which shard `ds` reads, to name an image that
  fails to decode.
  """
  ds = ds.batch(per_device, drop_remainder=True)
  ds = ds.batch(num_local_devices, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  # One thread per op, parallelism across examples (as the reference sets).
  options.threading.max_intra_op_parallelism = 1
  return _naming_undecodable_files(
      ds.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator(),
      name, split, data_dir, process_index, process_count)


def pretrain_batches(
    name: str, *, data_dir: str, fashion_mnist_dir: str,
    global_batch_size: int, num_local_devices: int, process_index: int,
    process_count: int, image_size: int, seed: int, start_step: int = 0,
    crop_area: tuple[float, float] = (0.08, 1.0),
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3),
    split: str = 'train_and_valid',
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless two-view batches for BYOL pretraining.

  Args:
    name: TFDS dataset name.
    data_dir, fashion_mnist_dir: see sources.load_split.
    global_batch_size: examples per step over all processes.
    num_local_devices: D, devices of this process.
    process_index, process_count: this process and how many there are.
    image_size: S, side of the output views in pixels.
    seed: the data seed; the batches are a pure function of it and the step.
    start_step: first step to produce (for resuming).
    crop_area: range of the crop's fraction of the image area.
    crop_aspect: range of the crop's width / height.
    split: see sources.SPLITS; the reference pretrains on 'train_and_valid'.
    shuffle_window: see DEFAULT_SHUFFLE_WINDOW.

  Yields:
    view1, view2: uint8[D, per_device, S, S, 3], two independent random
      resized crops of the same images; labels: int32[D, per_device].

  Raises:
    ValueError: global_batch_size does not split evenly over the devices.
    DatasetError: see sources.get_builder.
  """
  per_device = parallel.check_batch_divisible(
      global_batch_size, num_local_devices * process_count)
  ds = _train_stream(
      name, split, data_dir=data_dir, fashion_mnist_dir=fashion_mnist_dir,
      process_index=process_index, process_count=process_count, seed=seed,
      stream=_PRETRAIN_STREAM,
      start_example=start_step * per_device * num_local_devices,
      shuffle_window=shuffle_window)

  def two_views(key, image, label):
    view1, view2 = (
        crops.random_resized_crop(image, _fold_in(key, view), image_size,
                                  crop_area, crop_aspect)
        for view in (0, 1))
    return {'view1': view1, 'view2': view2, 'labels': label}

  return _to_numpy_batches(
      _parallel_map(ds, two_views), per_device, num_local_devices, name=name,
      split=split, data_dir=data_dir, process_index=process_index,
      process_count=process_count)


def linear_train_batches(
    name: str, *, data_dir: str, fashion_mnist_dir: str,
    global_batch_size: int, num_local_devices: int, process_index: int,
    process_count: int, image_size: int, seed: int, start_step: int = 0,
    crop_area: tuple[float, float] = (0.08, 1.0),
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3),
    split: str = 'train_and_valid',
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches for training a linear classifier (or fine-tuning).

  Arguments as pretrain_batches. Each image is a random resized crop with a
  random horizontal flip, as the reference's LINEAR_TRAIN mode.

  Yields:
    images: uint8[D, per_device, S, S, 3]; labels: int32[D, per_device];
    mask: bool[D, per_device], all True (the same keys as eval batches).
  """
  per_device = parallel.check_batch_divisible(
      global_batch_size, num_local_devices * process_count)
  ds = _train_stream(
      name, split, data_dir=data_dir, fashion_mnist_dir=fashion_mnist_dir,
      process_index=process_index, process_count=process_count, seed=seed,
      stream=_LINEAR_TRAIN_STREAM,
      start_example=start_step * per_device * num_local_devices,
      shuffle_window=shuffle_window)

  def crop_and_flip(key, image, label):
    image = crops.random_resized_crop(image, _fold_in(key, 0), image_size,
                                      crop_area, crop_aspect)
    # Flipping commutes with the resize (up to float rounding), so flipping
    # the small output equals flipping the crop first as the reference does.
    image = tf.image.stateless_random_flip_left_right(image, _fold_in(key, 1))
    return {'images': image, 'labels': label, 'mask': tf.constant(True)}

  return _to_numpy_batches(
      _parallel_map(ds, crop_and_flip), per_device, num_local_devices,
      name=name, split=split, data_dir=data_dir, process_index=process_index,
      process_count=process_count)


def num_eval_batches(split_size: int, global_batch_size: int,
                     process_count: int) -> int:
  """Batches every process yields for a split of `split_size` examples.

  All processes yield the same number (that of the largest shard), so a
  pmapped evaluation step runs equally often on each of them.
  """
  largest_shard = -(-split_size // process_count)
  return math.ceil(largest_shard / (global_batch_size // process_count))


def eval_batches(
    name: str, split: str, *, data_dir: str, fashion_mnist_dir: str,
    global_batch_size: int, num_local_devices: int, process_index: int,
    process_count: int, image_size: int, crop_fraction: float,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's shard of `split`, centre-cropped.

  Args:
    name, split: dataset and split (see sources.SPLITS).
    data_dir, fashion_mnist_dir: see sources.load_split.
    global_batch_size, num_local_devices, process_index, process_count: as
      in pretrain_batches.
    image_size: S, output side in pixels.
    crop_fraction: side of the central square as a fraction of the image's
      shorter side (the reference: 224 / 256; tiny images: 1.0).

  Yields:
    `num_eval_batches(...)` batches of images: uint8[D, per_device, S, S, 3],
    labels: int32[D, per_device], mask: bool[D, per_device]. Padding at the
    end has zero images and labels and mask False, so summing over masked
    entries counts every example of the split exactly once.
  """
  per_device = parallel.check_batch_divisible(
      global_batch_size, num_local_devices * process_count,
      flag='eval.global_batch_size')
  ds = sources.load_split(
      name, split, data_dir, fashion_mnist_dir=fashion_mnist_dir,
      process_index=process_index, process_count=process_count,
      shuffle_files=False, seed=0)
  split_size = sources.num_examples(name, split, data_dir,
                                    fashion_mnist_dir=fashion_mnist_dir)
  shard_size = sources.num_examples(
      name, split, data_dir, fashion_mnist_dir=fashion_mnist_dir,
      process_index=process_index, process_count=process_count)
  num_batches = num_eval_batches(split_size, global_batch_size, process_count)
  num_padding = num_batches * per_device * num_local_devices - shard_size

  def center(image, label):
    image = crops.center_crop(image, image_size, crop_fraction)
    return {'images': image, 'labels': label, 'mask': tf.constant(True)}

  padding = tf.data.Dataset.from_tensors({
      'images': tf.zeros([image_size, image_size, 3], tf.uint8),
      'labels': tf.constant(0, tf.int32),
      'mask': tf.constant(False),
  }).repeat(num_padding)
  return _to_numpy_batches(
      _parallel_map(ds, center).concatenate(padding), per_device,
      num_local_devices, name=name, split=split, data_dir=data_dir,
      process_index=process_index, process_count=process_count)
