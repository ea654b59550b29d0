"""Fashion-MNIST as a normal TFDS dataset, built offline from local IDX files.

TFDS's own `fashion_mnist` builder downloads four gzipped IDX files. Debian's
`dataset-fashion-mnist` package ships the same files, so we build the dataset
from them: a builder that inherits TFDS's name, version and features and only
replaces where the examples come from. Afterwards `tfds.builder('fashion_mnist',
data_dir=...)` and `tfds.load` read it like any downloaded dataset.
"""

import gzip
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from byol_jax.data.errors import DatasetError

DEFAULT_SOURCE_DIR = '/usr/share/datasets/fashion-mnist'

# split -> (images file, labels file), the names used by the upstream release.
SOURCE_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}

_SIDE = 28  # pixels
_NUM_CLASSES = 10
_UNSIGNED_BYTE = 0x08  # IDX element-type code


def _repair_hint(source_dir: str) -> str:
  return ('reinstall with: apt-get install --reinstall dataset-fashion-mnist '
          f'(or put good copies of the four files in {source_dir})')


def _read_gzip(path: str, source_dir: str) -> bytes:
  if not os.path.isfile(path):
    raise DatasetError(
        f'Fashion-MNIST file {path} not found: install it with '
        '`apt-get install -y dataset-fashion-mnist`, or put '
        f'{", ".join(sum(SOURCE_FILES.values(), ()))} in one directory and '
        'set config.dataset.fashion_mnist_dir to it.')
  try:
    with gzip.open(path, 'rb') as f:
      return f.read()
  # EOFError: truncated stream; BadGzipFile (an OSError): not gzip or bad CRC;
  # zlib.error: corrupt deflate data.
  except (OSError, EOFError, zlib.error) as e:
    raise DatasetError(
        f'{path} is not a readable gzip file ({e}); '
        f'{_repair_hint(source_dir)}') from None


def read_idx(path: str, trailing_dims: tuple[int, ...],
             source_dir: str) -> np.ndarray:
  """Reads one gzipped IDX file of unsigned bytes, validating it completely.

  Args:
    path: the `.gz` file.
    trailing_dims: the expected dimensions after the leading example count,
      e.g. `(28, 28)` for images and `()` for labels.
    source_dir: the directory named in error messages.

  Returns:
    uint8 array of shape `(N, *trailing_dims)`.

  Raises:
    DatasetError: missing file, bad gzip, wrong magic number, wrong dimensions,
      or a payload whose length is not exactly what the header announces.
  """
  raw = _read_gzip(path, source_dir)
  ndim = 1 + len(trailing_dims)
  header_len = 4 + 4 * ndim  # magic, then one big-endian uint32 per dim
  hint = _repair_hint(source_dir)
  if len(raw) < header_len:
    raise DatasetError(f'{path} is truncated ({len(raw)} bytes, shorter than '
                       f'its {header_len}-byte header); {hint}')
  magic = bytes([0, 0, _UNSIGNED_BYTE, ndim])
  if raw[:4] != magic:
    raise DatasetError(f'{path} has magic number 0x{raw[:4].hex()}, expected '
                       f'0x{magic.hex()}; {hint}')
  dims = struct.unpack(f'>{ndim}I', raw[4:header_len])
  if tuple(dims[1:]) != tuple(trailing_dims):
    expected_dims = ', '.join(['N', *map(str, trailing_dims)])
    raise DatasetError(f'{path} has dimensions {dims}, expected '
                       f'({expected_dims}); {hint}')
  expected = header_len + int(np.prod(dims))
  if len(raw) != expected:
    raise DatasetError(f'{path} holds {len(raw)} bytes but its header '
                       f'announces {expected}; {hint}')
  return np.frombuffer(raw, np.uint8, offset=header_len).reshape(dims)


def read_split(source_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads and validates one split of the local files.

  Returns:
    images: uint8[N, 28, 28, 1]; labels: int64[N], each in [0, 10).
  """
  images_name, labels_name = SOURCE_FILES[split]
  images_path = os.path.join(source_dir, images_name)
  labels_path = os.path.join(source_dir, labels_name)
  images = read_idx(images_path, (_SIDE, _SIDE), source_dir)
  labels = read_idx(labels_path, (), source_dir)
  hint = _repair_hint(source_dir)
  if len(images) != len(labels):
    raise DatasetError(f'{images_path} holds {len(images)} images but '
                       f'{labels_path} holds {len(labels)} labels; {hint}')
  if labels.size and labels.max() >= _NUM_CLASSES:
    raise DatasetError(f'{labels_path} has label {labels.max()}, expected '
                       f'0..{_NUM_CLASSES - 1}; {hint}')
  return images[..., None], labels.astype(np.int64)


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST,
                         skip_registration=True):
  """TFDS's Fashion-MNIST builder fed from arrays instead of the network.

  Name, version, features and example keys are TFDS's, so the prepared
  directory is indistinguishable from one `tfds build fashion_mnist` writes.
  """

  name = 'fashion_mnist'
  # TFDS looks up a download-checksums file next to the builder's code; we
  # download nothing. (Resolving the code path also imports the
  # `importlib_resources` backport in TFDS 4.9.10, absent on Python >= 3.9.)
  code_path = None

  def __init__(self, *, arrays, **kwargs):
    self._arrays = arrays  # split -> (images, labels), already validated
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(*arrays)
            for split, arrays in self._arrays.items()}

  def _generate_examples(self, images, labels):  # pylint: disable=arguments-differ
    # The index as key, as TFDS's builder does, gives the same stored order.
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image, 'label': label}


def is_prepared(data_dir: str) -> bool:
  """Whether `fashion_mnist` (TFDS's current version) is ready in data_dir."""
  return tfds.builder('fashion_mnist', data_dir=data_dir).is_prepared()


def prepare_fashion_mnist(data_dir: str,
                          source_dir: str = DEFAULT_SOURCE_DIR) -> None:
  """Writes `fashion_mnist` into the TFDS directory data_dir; no-op if there.

  All four source files are read and validated before anything is written;
  the dataset is then built in a hidden temporary directory inside data_dir
  and moved into place with one rename, so a failure leaves data_dir as it
  was. Safe against several processes preparing the same data_dir at once.

  Args:
    data_dir: a local TFDS data directory (created if missing).
    source_dir: directory holding the four `*-ubyte.gz` files.

  Raises:
    DatasetError: a source file is missing or corrupt, or data_dir is remote.
  """
  if is_prepared(data_dir):
    return
  if '://' in data_dir:
    raise DatasetError(
        f'cannot build fashion_mnist directly in {data_dir}: build it into a '
        'local data_dir first, then copy that directory there.')
  arrays = {split: read_split(source_dir, split) for split in SOURCE_FILES}

  os.makedirs(data_dir, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix='.fashion_mnist-incomplete-', dir=data_dir)
  try:
    builder = _LocalFashionMNIST(arrays=arrays, data_dir=tmp_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            # The default asks GCS for a pre-built copy: a network call.
            try_download_gcs=False))
    built = os.path.join(tmp_dir, 'fashion_mnist', str(builder.version))
    final = os.path.join(data_dir, 'fashion_mnist', str(builder.version))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    try:
      os.rename(built, final)
    except OSError:
      # Another process may have finished first; its copy is as good as ours.
      if not is_prepared(data_dir):
        raise
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
