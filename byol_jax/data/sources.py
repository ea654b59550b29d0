"""This process's shard of a TFDS image-classification split, as RGB uint8.

Our split names and how they map onto TFDS's splits:

  split             ImageNet (`imagenet2012`)      any other dataset
  'train'           tfds train[10000:]              tfds train[n // 10:]
  'valid'           tfds train[:10000]              tfds train[:n // 10]
  'train_and_valid' tfds train                      tfds train
  'test'            tfds validation                 tfds test (validation if
                                                    there is no test split)

(n is the size of TFDS's train split.) ImageNet follows the reference: its
labelled test set is TFDS's validation split and 10,000 training images are
held out for model selection. Other datasets hold out the first 10 % of TFDS's
train split the same way. Like the reference, pretraining and linear training
use 'train_and_valid' and final numbers are reported on 'test'.

Each split is cut into `process_count` contiguous, disjoint ranges that cover
it; process i reads only range i, as absolute example indices, so no process
reads data that it then throws away.

The name 'image_folder' reads images in class folders instead of TFDS (see
image_folder.py), with data_dir the folder: 'train', 'valid' and
'train_and_valid' cut train/'s images (in their fixed pseudo-random order)
as TFDS's train split above, and 'test' is the test folder.
"""

from collections.abc import Iterator, Mapping
import contextlib
import os
import re
from typing import NamedTuple

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from byol_jax.data import fashion_mnist
from byol_jax.data import image_folder
from byol_jax.data.errors import DatasetError

SPLITS = ('train', 'valid', 'train_and_valid', 'test')

# Datasets whose conventions differ from the default (see module docstring):
# name -> (held-out examples at the head of train, tfds split used as 'test').
_CONVENTIONS = {'imagenet2012': (10_000, 'validation')}

_MANUAL_DOWNLOAD_FILES = {
    'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar',
}


class DatasetSpec(NamedTuple):
  """What a model and a schedule need to know about a dataset.

  image_shape: (height, width, channels) as stored; None entries vary by image.
  num_classes: number of labels.
  split_sizes: our split name -> number of examples (all processes
    together), for the splits of SPLITS that the dataset has.
  """
  image_shape: tuple[int | None, ...]
  num_classes: int
  split_sizes: Mapping[str, int]


def split_range(name: str, split: str,
                tfds_sizes: Mapping[str, int]) -> tuple[str, int, int]:
  """Where our split lives in TFDS: (tfds split, start, end), end exclusive.

  Args:
    name: the TFDS builder name, e.g. 'imagenet2012' (no version).
    split: one of SPLITS.
    tfds_sizes: TFDS split name -> number of examples.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')
  num_train = tfds_sizes.get('train', 0)
  held_out, test_split = _CONVENTIONS.get(
      name, (num_train // 10,
             'test' if 'test' in tfds_sizes else 'validation'))
  needed = test_split if split == 'test' else 'train'
  if needed not in tfds_sizes:
    raise DatasetError(f'{name} has no {needed!r} split (it has '
                       f'{sorted(tfds_sizes)}), needed for our {split!r}.')
  if split == 'test':
    return test_split, 0, tfds_sizes[test_split]
  return {
      'train': ('train', held_out, num_train),
      'valid': ('train', 0, held_out),
      'train_and_valid': ('train', 0, num_train),
  }[split]


def shard_range(start: int, end: int, process_index: int,
                process_count: int) -> tuple[int, int]:
  """Process `process_index`'s contiguous part of [start, end).

  The parts of all processes are disjoint, cover [start, end) and differ in
  size by at most one example.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in '
                     f'[0, {process_count})')
  size = end - start
  return (start + size * process_index // process_count,
          start + size * (process_index + 1) // process_count)


def _not_prepared_message(builder: tfds.core.DatasetBuilder) -> str:
  data_dir = os.fspath(builder.data_dir_root)
  build = f'tfds build {builder.name} --data_dir={data_dir}'
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    files = _MANUAL_DOWNLOAD_FILES.get(builder.name,
                                       'the manually downloaded files')
    return (f'{builder.name} is not prepared in {data_dir}: put {files} in '
            f'{data_dir}/downloads/manual/ and run `{build}`.')
  return (f'{builder.name} is not prepared in {data_dir}: run `{build}` on a '
          f'machine with internet, then copy its {builder.name}/ directory '
          f'into {data_dir}/.')


@contextlib.contextmanager
def _without_tfds_warnings() -> Iterator[None]:
  """Hides TFDS's warnings (absl logging) unless INFO or more is asked for.

  Looking up a dataset that is not prepared makes TFDS warn, e.g. `Variant
  folder .../cifar10/3.0.2 has no dataset_info.json`, before our DatasetError
  says the same thing with the command that fixes it.
  """
  verbosity = logging.get_verbosity()
  if verbosity > logging.WARNING:  # --verbosity=0 or more: show everything
    yield
    return
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def get_builder(name: str, data_dir: str | None, *,
                fashion_mnist_dir: str) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder for `name` ('name[/config][:version]').

  `data_dir` None means TFDS's default ($TFDS_DATA_DIR or
  ~/tensorflow_datasets).

  `fashion_mnist` is first built from the local IDX files in
  fashion_mnist_dir if data_dir lacks it. Nothing is ever downloaded: a
  dataset that is not prepared fails at once.

  Raises:
    DatasetError: not a TFDS name, unknown dataset, a config or version the
      dataset lacks, not prepared, or bad Fashion-MNIST files.
  """
  data_dir = data_dir or os.path.expanduser(tfds.core.constants.DATA_DIR)
  extras = _name_extras(name, data_dir)
  if name.split(':')[0] == 'fashion_mnist':
    fashion_mnist.prepare_fashion_mnist(data_dir, fashion_mnist_dir)
  with _without_tfds_warnings():
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise DatasetError(
          f'no dataset {name!r} in {data_dir} and TFDS knows no builder of '
          f'that name; {_name_choices(data_dir)}, or put its prepared '
          f'{name}/ directory in {data_dir}/') from None
    except (AssertionError, TypeError, ValueError) as e:
      if not extras:
        raise  # not the name's fault
      base = name.split('/')[0].split(':')[0]
      raise DatasetError(
          f'dataset.name {name!r}: {_tfds_reason(e)}; change or drop what '
          f'follows {base} in it, e.g. --config.dataset.name={base}') from None
    prepared = builder.is_prepared()
  if not prepared:
    raise DatasetError(_not_prepared_message(builder))
  return builder


def _name_extras(name: str, data_dir: str) -> dict[str, object]:
  """What a TFDS name gives besides the dataset, e.g. {'version': '3.*.*'}.

  Raises:
    DatasetError: `name` is not a TFDS name at all (e.g. '5' or 'a b').
  """
  try:
    _, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
  except ValueError:  # TFDS's 18-line explanation of its name syntax
    raise DatasetError(
        f'dataset.name {name!r} is not a dataset name (TFDS names are '
        f'name[/config][:version]); {_name_choices(data_dir)}') from None
  return kwargs


def _name_choices(data_dir: str) -> str:
  """The fix for a dataset name that cannot work: the names that can."""
  prepared = [n for n in _prepared_names(data_dir) if n != 'fashion_mnist']
  listed = f' ({", ".join(prepared)})' if prepared else ''
  return (f'pass --config.dataset.name=fashion_mnist, {image_folder.NAME} or '
          f'a TFDS dataset prepared in {data_dir}{listed}')


def _prepared_names(data_dir: str) -> list[str]:
  """Datasets in data_dir with a <version>/ or <config>/<version>/ folder."""
  names = set()
  for depth in (3, 4):  # data_dir/name[/config]/version/dataset_info.json
    pattern = os.path.join(data_dir, *['*'] * (depth - 1), 'dataset_info.json')
    names.update(path.split('/')[-depth] for path in tf.io.gfile.glob(pattern))
  return sorted(names - {'downloads'})


def _tfds_reason(error: Exception) -> str:
  """The first sentence of why TFDS could not construct a builder."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  reason = re.sub(r'^Failed to construct dataset .*?builder_kwargs ".*?": ',
                  '', lines[0])
  return reason.split('. ')[0].rstrip('.')


def _tfds_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  return {k: v.num_examples for k, v in builder.info.splits.items()}


def _folder_listing(data_dir: str | None) -> image_folder.Listing:
  if not data_dir:
    raise DatasetError(
        f'dataset {image_folder.NAME} reads a folder of images: pass '
        '--config.dataset.data_dir=<folder> with images in '
        '<folder>/train/<class>/<image>.')
  return image_folder.scan(data_dir)


def _folder_files(data_dir: str | None, split: str, process_index: int = 0,
                  process_count: int = 1) -> image_folder.Files:
  """The images of this process's shard of `split` of an image folder."""
  listing = _folder_listing(data_dir)
  if split == 'test':
    if listing.test is None:
      raise DatasetError(
          f'{data_dir} has no {", ".join(image_folder.TEST_FOLDERS[:-1])} or '
          f'{image_folder.TEST_FOLDERS[-1]} folder, needed for the test '
          f'split: put test images in {data_dir}/test/<class>/<image>.')
    files, start, end = listing.test, 0, len(listing.test.paths)
  else:
    files = listing.train
    _, start, end = split_range(image_folder.NAME, split,
                                {'train': len(files.paths)})
  start, end = shard_range(start, end, process_index, process_count)
  return image_folder.Files(files.paths[start:end], files.labels[start:end])


def dataset_spec(name: str, data_dir: str, *,
                 fashion_mnist_dir: str) -> DatasetSpec:
  """Image shape, number of classes and split sizes of a prepared dataset.

  split_sizes lists the splits of SPLITS that the dataset has. An image
  folder's image_shape is (None, None, 3): its images may differ in size.
  """
  if name == image_folder.NAME:
    listing = _folder_listing(data_dir)
    has_test = listing.test is not None
    return DatasetSpec(
        image_shape=(None, None, 3), num_classes=len(listing.classes),
        split_sizes={split: len(_folder_files(data_dir, split).paths)
                     for split in SPLITS if split != 'test' or has_test})
  builder = get_builder(name, data_dir, fashion_mnist_dir=fashion_mnist_dir)
  image_key, label_key = builder.info.supervised_keys or ('image', 'label')
  features = builder.info.features
  sizes = {}
  for split in SPLITS:
    try:
      _, start, end = split_range(builder.name, split, _tfds_sizes(builder))
    except DatasetError:
      continue  # e.g. no test split
    sizes[split] = end - start
  return DatasetSpec(image_shape=tuple(features[image_key].shape),
                     num_classes=features[label_key].num_classes,
                     split_sizes=sizes)


def num_examples(name: str, split: str, data_dir: str, *,
                 fashion_mnist_dir: str, process_index: int = 0,
                 process_count: int = 1) -> int:
  """Examples in this process's shard of `split` (the whole split by default).

  Raises:
    DatasetError: see get_builder and image_folder.scan; also a dataset
      without that split.
  """
  if name == image_folder.NAME:
    return len(_folder_files(data_dir, split, process_index,
                             process_count).paths)
  builder = get_builder(name, data_dir, fashion_mnist_dir=fashion_mnist_dir)
  _, start, end = split_range(builder.name, split, _tfds_sizes(builder))
  start, end = shard_range(start, end, process_index, process_count)
  return end - start


def load_split(name: str, split: str, data_dir: str, *,
               fashion_mnist_dir: str, process_index: int, process_count: int,
               shuffle_files: bool, seed: int,
               decode: bool = True) -> tf.data.Dataset:
  """This process's shard of `split`.

  Args:
    name: TFDS name ('fashion_mnist', 'cifar10', 'imagenet2012:5.*.*', ...)
      of a dataset with an image and a label feature, or 'image_folder'.
    split: one of SPLITS.
    data_dir: the TFDS data directory; for 'image_folder', the folder.
    fashion_mnist_dir: where the Fashion-MNIST IDX files are (used only when
      `fashion_mnist` must be prepared).
    process_index, process_count: which shard to read, out of how many.
    shuffle_files: read the shard's files in a seeded random order (the order
      of examples inside a file is kept). An image folder is always read in
      its fixed order.
    seed: seed of that file order.
    decode: False keeps images encoded (a tf.string scalar; `decode_rgb`
      decodes it), which is ~5x smaller to hold in a shuffle buffer.

  Returns:
    Dataset of (image uint8[H, W, 3], label int32); grayscale is repeated to
    3 channels. Element order is a pure function of the arguments.

  Raises:
    DatasetError: see get_builder and image_folder.scan; also a dataset
      without that split, or images with 2 or 4 channels.
  """
  if name == image_folder.NAME:
    return _read_files(
        _folder_files(data_dir, split, process_index, process_count), decode)
  builder = get_builder(name, data_dir, fashion_mnist_dir=fashion_mnist_dir)
  image_key = (builder.info.supervised_keys or ('image',))[0]
  channels = builder.info.features[image_key].shape[-1]
  if channels not in (1, 3):
    raise DatasetError(f'{builder.name} images have {channels} channels; '
                       'only grayscale (1) and RGB (3) are supported.')
  tfds_split, start, end = split_range(builder.name, split,
                                       _tfds_sizes(builder))
  start, end = shard_range(start, end, process_index, process_count)
  # TFDS refuses empty instructions; read one example and drop it instead.
  instruction = tfds.core.ReadInstruction(
      tfds_split, from_=start, to=max(end, start + 1), unit='abs')
  ds = builder.as_dataset(
      split=instruction, as_supervised=True, shuffle_files=shuffle_files,
      decoders=None if decode else {image_key: tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
  ds = ds.take(end - start)
  options = tf.data.Options()
  options.deterministic = True
  to_rgb = (tf.image.grayscale_to_rgb if decode and channels == 1
            else tf.identity)
  convert = tf.autograph.experimental.do_not_convert(
      lambda image, label: (to_rgb(image), tf.cast(label, tf.int32)))
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True).with_options(options)


def _read_files(files: image_folder.Files, decode: bool) -> tf.data.Dataset:
  """(image, label int32) of each file, as load_split's result."""
  def read(path, label):
    data = tf.io.read_file(path)
    return (decode_rgb(data) if decode else data), label
  ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(files.paths, tf.string),
       tf.constant(files.labels, tf.int32)))
  options = tf.data.Options()
  options.deterministic = True
  return ds.map(tf.autograph.experimental.do_not_convert(read),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True).with_options(options)


def split_fingerprint(name: str, split: str, data_dir: str | None, *,
                      process_index: int, process_count: int) -> str | None:
  """For an image folder, a digest of this process's shard of `split`.

  See image_folder.fingerprint; None for TFDS datasets, whose versions
  already name their contents.
  """
  if name != image_folder.NAME:
    return None
  files = _folder_files(data_dir, split, process_index, process_count)
  return image_folder.fingerprint(files, data_dir)


def check_decodable(name: str, split: str, data_dir: str | None, *,
                    process_index: int, process_count: int) -> None:
  """Decodes every image of this process's shard of `split` eagerly.

  What to call once tf.data failed to decode an image, since its error does
  not name the file. The images are decoded in parallel, one thread per CPU.
  Does nothing for TFDS datasets (their examples are not files of ours).

  Raises:
    DatasetError: naming how many images do not decode, and the first.
  """
  if name != image_folder.NAME:
    return
  def problem(path):
    try:
      decode_rgb(tf.io.read_file(path))
    except tf.errors.OpError as e:
      return str(e)
    return None
  files = _folder_files(data_dir, split, process_index, process_count)
  bad = image_folder.find_problems(files.paths, problem,
                                   threads=os.cpu_count() or 1)
  if bad:
    raise image_folder.files_error(
        [path for path, _ in bad], 'cannot be decoded (truncated or corrupt)',
        f'images of {data_dir} (split {split!r}) cannot be decoded '
        '(truncated or corrupt)', 'remove or replace {it}')


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes (tf.string scalar) -> uint8[H, W, 3]."""
  # channels=3 also expands grayscale, matching load_split(decode=True);
  # an animated GIF gives its first frame.
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)
