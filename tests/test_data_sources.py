"""Split conventions, per-process shards, and immediate errors for missing data."""

import socket

import numpy as np
import pytest

from byol_jax.data import sources
from byol_jax.data.errors import DatasetError
from tests.test_data_fashion_mnist import NUM_TEST, NUM_TRAIN, write_fashion_mnist

IMAGENET_SIZES = {'train': 1_281_167, 'validation': 50_000, 'test': 100_000}


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """(data_dir, fashion_mnist_dir); fashion_mnist is prepared on first use."""
  source = str(tmp_path_factory.mktemp('source'))
  write_fashion_mnist(source)
  return str(tmp_path_factory.mktemp('tfds')), source


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a connection fails the test loudly."""
  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)


def test_imagenet_splits_follow_the_reference():
  split = lambda s: sources.split_range('imagenet2012', s, IMAGENET_SIZES)
  assert split('train') == ('train', 10_000, 1_281_167)
  assert split('valid') == ('train', 0, 10_000)
  assert split('train_and_valid') == ('train', 0, 1_281_167)
  # TFDS's imagenet2012 has an unlabelled 'test'; the reference's test set is
  # the labelled validation split.
  assert split('test') == ('validation', 0, 50_000)


def test_other_datasets_hold_out_a_tenth_of_train():
  sizes = {'train': 60_000, 'test': 10_000}
  split = lambda s: sources.split_range('fashion_mnist', s, sizes)
  assert split('train') == ('train', 6_000, 60_000)
  assert split('valid') == ('train', 0, 6_000)
  assert split('train_and_valid') == ('train', 0, 60_000)
  assert split('test') == ('test', 0, 10_000)
  only_validation = {'train': 9_469, 'validation': 3_925}
  assert sources.split_range('imagenette', 'test', only_validation) == (
      'validation', 0, 3_925)
  with pytest.raises(ValueError, match='unknown split'):
    sources.split_range('fashion_mnist', 'validation', sizes)
  with pytest.raises(DatasetError, match="no 'validation' split"):
    sources.split_range('train_only', 'test', {'train': 10, 'test_v2': 5})


@pytest.mark.parametrize('size,count', [(10, 3), (7, 2), (2, 4), (1_271_167, 64)])
def test_shards_are_disjoint_contiguous_and_cover(size, count):
  ranges = [sources.shard_range(100, 100 + size, i, count)
            for i in range(count)]
  assert ranges[0][0] == 100 and ranges[-1][1] == 100 + size
  for (_, end), (start, _) in zip(ranges, ranges[1:]):
    assert end == start
  lengths = [end - start for start, end in ranges]
  assert max(lengths) - min(lengths) <= 1


def test_dataset_spec_of_prepared_fashion_mnist(dirs, no_network):
  data_dir, source = dirs
  spec = sources.dataset_spec('fashion_mnist', data_dir,
                              fashion_mnist_dir=source)
  assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10
  held_out = NUM_TRAIN // 10
  assert dict(spec.split_sizes) == {
      'train': NUM_TRAIN - held_out, 'valid': held_out,
      'train_and_valid': NUM_TRAIN, 'test': NUM_TEST}
  assert sources.num_examples('fashion_mnist', 'test', data_dir,
                              fashion_mnist_dir=source, process_index=1,
                              process_count=2) == NUM_TEST - NUM_TEST // 2


@pytest.mark.parametrize('process_count', [2, 3])
def test_process_shards_partition_the_split(dirs, process_count):
  data_dir, source = dirs
  seen = []
  for index in range(process_count):
    ds = sources.load_split(
        'fashion_mnist', 'test', data_dir, fashion_mnist_dir=source,
        process_index=index, process_count=process_count,
        shuffle_files=False, seed=0)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == sources.num_examples(
        'fashion_mnist', 'test', data_dir, fashion_mnist_dir=source,
        process_index=index, process_count=process_count)
    for image, label in examples:
      assert image.shape == (28, 28, 3) and image.dtype == np.uint8
      assert label.dtype == np.int32
      # Grayscale repeated into three identical channels.
      np.testing.assert_array_equal(image[..., 0], image[..., 2])
    seen += [label for _, label in examples]
  # Test labels are unique: every example read once, by exactly one process.
  assert sorted(seen) == list(range(NUM_TEST))


def test_encoded_images_decode_to_the_same_pixels(dirs):
  data_dir, source = dirs
  kwargs = dict(fashion_mnist_dir=source, process_index=0, process_count=1,
                shuffle_files=False, seed=0)
  decoded = list(sources.load_split('fashion_mnist', 'valid', data_dir,
                                    **kwargs).as_numpy_iterator())
  encoded = list(sources.load_split('fashion_mnist', 'valid', data_dir,
                                    decode=False, **kwargs))
  assert len(decoded) == len(encoded) == NUM_TRAIN // 10
  for (image, label), (data, encoded_label) in zip(decoded, encoded):
    np.testing.assert_array_equal(sources.decode_rgb(data).numpy(), image)
    assert label == encoded_label.numpy()


def test_unprepared_dataset_fails_at_once_with_the_build_command(
    tmp_path, no_network):
  with pytest.raises(DatasetError) as error:
    sources.load_split('cifar10', 'train', str(tmp_path),
                       fashion_mnist_dir='', process_index=0,
                       process_count=1, shuffle_files=False, seed=0)
  assert f'tfds build cifar10 --data_dir={tmp_path}' in str(error.value)


def test_imagenet_error_says_where_the_tars_go(tmp_path, no_network):
  with pytest.raises(DatasetError) as error:
    sources.dataset_spec('imagenet2012', str(tmp_path), fashion_mnist_dir='')
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar' in message
  assert f'{tmp_path}/downloads/manual/' in message
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in message
  assert '\n' not in message


def test_unknown_dataset_is_a_dataset_error(tmp_path, no_network):
  with pytest.raises(DatasetError, match="no dataset 'not_a_dataset'"):
    sources.dataset_spec('not_a_dataset', str(tmp_path), fashion_mnist_dir='')


def _prepare_stand_in(data_dir, *parts):
  """A folder that looks like a prepared TFDS dataset, to be listed."""
  folder = data_dir.joinpath(*parts)
  folder.mkdir(parents=True)
  (folder / 'dataset_info.json').write_text('{}')


@pytest.mark.parametrize('name, problem', [
    ('5', "dataset.name '5' is not a dataset name (TFDS names are "
     'name[/config][:version]); '),
    ('', "dataset.name '' is not a dataset name"),
    ('Fashion-MNIST', "dataset.name 'Fashion-MNIST' is not a dataset name"),
    ('not_a_dataset', "no dataset 'not_a_dataset' in {data_dir} and TFDS "
     'knows no builder of that name; '),
])
def test_a_name_that_names_no_dataset_is_one_line_with_the_choices(
    tmp_path, no_network, name, problem):
  _prepare_stand_in(tmp_path, 'cifar100', '3.0.2')
  _prepare_stand_in(tmp_path, 'imagenet2012_subset', '1pct', '5.0.0')
  with pytest.raises(DatasetError) as error:
    sources.dataset_spec(name, str(tmp_path), fashion_mnist_dir='')
  message = str(error.value)
  assert message.startswith(problem.format(data_dir=tmp_path)), message
  assert ('pass --config.dataset.name=fashion_mnist, image_folder or a TFDS '
          f'dataset prepared in {tmp_path} (cifar100, imagenet2012_subset)'
          in message), message
  assert '\n' not in message


def test_a_config_or_version_the_dataset_lacks_is_one_line(dirs, tmp_path,
                                                           no_network):
  with pytest.raises(DatasetError) as error:
    sources.dataset_spec('cifar10/no_such_config', str(tmp_path),
                         fashion_mnist_dir='')
  assert str(error.value) == (
      "dataset.name 'cifar10/no_such_config': BuilderConfig no_such_config "
      'not found with version 3.0.2; change or drop what follows cifar10 in '
      'it, e.g. --config.dataset.name=cifar10')
  data_dir, source = dirs
  with pytest.raises(DatasetError) as error:
    sources.dataset_spec('fashion_mnist:9.9.9', data_dir,
                         fashion_mnist_dir=source)
  assert str(error.value).startswith(
      "dataset.name 'fashion_mnist:9.9.9': Dataset fashion_mnist cannot be "
      'loaded at version 9.9.9, only: 3.0.1; change or drop'), error.value
  # A version TFDS has is a genuine name.
  spec = sources.dataset_spec('fashion_mnist:3.*.*', data_dir,
                              fashion_mnist_dir=source)
  assert spec.num_classes == 10
