"""Fashion-MNIST from local IDX files: a normal TFDS dataset, or a clear error."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from byol_jax.data import fashion_mnist
from byol_jax.data.errors import DatasetError

NUM_TRAIN = 20
NUM_TEST = 7


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim])
  return header + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()


def write_fashion_mnist(directory, num_train=NUM_TRAIN, num_test=NUM_TEST):
  """Writes the four gzipped IDX files of a tiny Fashion-MNIST.

  Train images are all the same smooth gradient (so any difference between
  crops of them comes from the crop), with labels i % 10. Test images are
  random and their labels 0..num_test-1 are unique, so each test example can
  be identified by its label.

  Returns:
    split -> (images uint8[N, 28, 28], labels uint8[N]).
  """
  rows, cols = np.mgrid[:28, :28]
  gradient = (4 * cols + 3 * rows).astype(np.uint8)
  rng = np.random.default_rng(0)
  arrays = {
      'train': (np.repeat(gradient[None], num_train, axis=0),
                (np.arange(num_train) % 10).astype(np.uint8)),
      'test': (rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
               np.arange(num_test, dtype=np.uint8)),
  }
  os.makedirs(directory, exist_ok=True)
  for split, (images_name, labels_name) in fashion_mnist.SOURCE_FILES.items():
    for name, array in zip((images_name, labels_name), arrays[split]):
      with gzip.open(os.path.join(directory, name), 'wb') as f:
        f.write(_idx_bytes(array))
  return arrays


def _contents(directory):
  if not os.path.exists(directory):
    return []
  return sorted(os.listdir(directory))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  source = str(tmp_path_factory.mktemp('source'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  arrays = write_fashion_mnist(source)
  fashion_mnist.prepare_fashion_mnist(data_dir, source)
  return data_dir, source, arrays


def test_prepared_dataset_loads_with_plain_tfds(prepared):
  data_dir, _, arrays = prepared
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  assert builder.is_prepared()
  assert builder.info.features['label'].names[0] == 'T-shirt/top'
  for split, (images, labels) in arrays.items():
    assert builder.info.splits[split].num_examples == len(labels)
    loaded = list(tfds.as_numpy(tfds.load('fashion_mnist', split=split,
                                          data_dir=data_dir)))
    got_images = np.stack([ex['image'] for ex in loaded])
    got_labels = np.array([ex['label'] for ex in loaded])
    # TFDS stores examples in its own shuffled order; compare as sets.
    order = np.argsort(got_labels, kind='stable')
    want = np.argsort(labels, kind='stable')
    np.testing.assert_array_equal(got_labels[order], labels[want])
    assert got_images.shape == (len(labels), 28, 28, 1)
    if split == 'test':  # unique labels pair images one to one
      np.testing.assert_array_equal(got_images[order, ..., 0], images[want])
    else:
      np.testing.assert_array_equal(got_images[..., 0],
                                    np.broadcast_to(images[0], images.shape))


def test_prepare_again_is_a_no_op(prepared):
  data_dir, source, _ = prepared
  version_dir = os.path.join(data_dir, 'fashion_mnist', '3.0.1')
  before = {f: os.path.getmtime(os.path.join(version_dir, f))
            for f in os.listdir(version_dir)}
  fashion_mnist.prepare_fashion_mnist(data_dir, source)
  after = {f: os.path.getmtime(os.path.join(version_dir, f))
           for f in os.listdir(version_dir)}
  assert before == after
  assert _contents(data_dir) == ['fashion_mnist']


def _corrupt(path, transform):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(transform(data))


def _regzip(transform):
  return lambda data: gzip.compress(transform(gzip.decompress(data)))


CORRUPTIONS = {
    'truncated gzip': ('train-images-idx3-ubyte.gz',
                       lambda data: data[:len(data) // 2], 'gzip'),
    'missing image': ('train-images-idx3-ubyte.gz',
                      _regzip(lambda raw: raw[:-784]), 'announces'),
    'wrong magic': ('t10k-labels-idx1-ubyte.gz',
                    _regzip(lambda raw: b'\x00\x00\x08\x03' + raw[4:]),
                    'magic number'),
    'wrong image size': ('t10k-images-idx3-ubyte.gz',
                         _regzip(lambda raw: raw[:8] + struct.pack('>I', 27)
                                 + raw[12:]),
                         'dimensions'),
    'label out of range': ('train-labels-idx1-ubyte.gz',
                           _regzip(lambda raw: raw[:-1] + b'\x0a'), 'label 10'),
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_corrupt_file_is_a_dataset_error_naming_it(tmp_path, corruption):
  filename, transform, problem = CORRUPTIONS[corruption]
  source, data_dir = str(tmp_path / 'source'), str(tmp_path / 'tfds')
  write_fashion_mnist(source)
  _corrupt(os.path.join(source, filename), transform)
  with pytest.raises(DatasetError) as error:
    fashion_mnist.prepare_fashion_mnist(data_dir, source)
  message = str(error.value)
  assert os.path.join(source, filename) in message
  assert problem in message
  assert 'apt-get install --reinstall dataset-fashion-mnist' in message
  assert '\n' not in message
  assert _contents(data_dir) == []


def test_missing_file_says_how_to_install(tmp_path):
  source, data_dir = str(tmp_path / 'source'), str(tmp_path / 'tfds')
  write_fashion_mnist(source)
  os.remove(os.path.join(source, 't10k-labels-idx1-ubyte.gz'))
  with pytest.raises(DatasetError, match='apt-get install -y dataset-fashion-'
                     'mnist.*config.dataset.fashion_mnist_dir'):
    fashion_mnist.prepare_fashion_mnist(data_dir, source)
  assert _contents(data_dir) == []


def test_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
  source, data_dir = str(tmp_path / 'source'), str(tmp_path / 'tfds')
  write_fashion_mnist(source)

  def fail_midway(self, images, labels):
    del self
    yield 0, {'image': images[0], 'label': labels[0]}
    raise OSError('disk full')

  monkeypatch.setattr(fashion_mnist._LocalFashionMNIST, '_generate_examples',
                      fail_midway)
  with pytest.raises(OSError, match='disk full'):
    fashion_mnist.prepare_fashion_mnist(data_dir, source)
  assert _contents(data_dir) == []
  assert not tfds.builder('fashion_mnist', data_dir=data_dir).is_prepared()
