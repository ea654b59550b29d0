"""Image folders: splits, shards, decoding, batches and one-line errors.

Each test writes its own tiny folder of random JPEGs and PNGs of several
sizes, some grayscale; two run the real entry points on one.
"""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from byol_jax import train_loop
from byol_jax.data import image_folder
from byol_jax.data import pipelines
from byol_jax.data import sources
from byol_jax.data.errors import DatasetError
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = image_folder.NAME
CLASSES = ('ant', 'bee', 'cat', 'dog')
TEST_CLASSES = CLASSES[1:]  # a subset: labels must still be train's indices
NUM_PER_CLASS = 10  # 40 training images: 'valid' holds the first 4
NUM_TEST_PER_CLASS = 3
# (height, width) of the images, in turn; every third image is grayscale.
SIZES = ((20, 30), (33, 17), (24, 24), (40, 21))
SIZE = 16  # output side of the batches in pixels


def _write(path, index, fmt=None):
  """Writes a random image; returns its pixels as RGB uint8[H, W, 3]."""
  height, width = SIZES[index % len(SIZES)]
  channels = 1 if index % 3 == 0 else 3
  pixels = np.random.default_rng(zlib.crc32(path.encode())).integers(
      0, 256, (height, width, channels), np.uint8)
  fmt = fmt or ('png' if index % 2 else 'jpeg')
  encode = tf.io.encode_png if fmt == 'png' else tf.io.encode_jpeg
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(encode(pixels).numpy())
  return np.repeat(pixels, 3 // channels, axis=-1)


def make_folder(root, *, test_folder='test', classes=CLASSES,
                num_per_class=NUM_PER_CLASS):
  """Writes an image folder; returns {relative path: (RGB pixels, label)}.

  Names vary in case and extension (.jpg, .JPEG, .png); a hidden file and a
  hidden folder, which must be ignored, sit beside the images.
  """
  images = {}
  splits = [('train', classes, num_per_class)]
  if test_folder:
    splits.append((test_folder, TEST_CLASSES, NUM_TEST_PER_CLASS))
  for split, split_classes, count in splits:
    for name in split_classes:
      for i in range(count):
        extension = ('.png' if i % 2 else ('.JPEG', '.jpg')[i % 4 == 0])
        relative = f'{split}/{name}/{name}{i}{extension}'
        pixels = _write(os.path.join(root, relative), i)
        images[relative] = pixels, CLASSES.index(name)
      with open(os.path.join(root, split, name, '.DS_Store'), 'w') as f:
        f.write('not an image')
  os.makedirs(os.path.join(root, 'train', '.thumbnails'))
  return images


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('images'))
  return root, make_folder(root)


def _load(root, split, index=0, count=1, decode=True):
  return list(sources.load_split(
      NAME, split, root, fashion_mnist_dir='', process_index=index,
      process_count=count, shuffle_files=False, seed=0,
      decode=decode).as_numpy_iterator())


def _relative_paths(root, split, index=0, count=1):
  """The files a shard reads, in order, identified by their bytes."""
  by_content = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        by_content[f.read()] = os.path.relpath(path, root)
  return [by_content[data] for data, _ in _load(root, split, index, count,
                                                decode=False)]


def test_spec_and_split_sizes(folder):
  root, _ = folder
  spec = sources.dataset_spec(NAME, root, fashion_mnist_dir='')
  assert spec.image_shape == (None, None, 3)
  assert spec.num_classes == len(CLASSES)
  num_train = len(CLASSES) * NUM_PER_CLASS
  assert dict(spec.split_sizes) == {
      'train': num_train - num_train // 10, 'valid': num_train // 10,
      'train_and_valid': num_train,
      'test': len(TEST_CLASSES) * NUM_TEST_PER_CLASS}
  for split, size in spec.split_sizes.items():
    assert sources.num_examples(NAME, split, root, fashion_mnist_dir='') == size
  assert sources.num_examples(NAME, 'test', root, fashion_mnist_dir='',
                              process_index=1, process_count=2) == 5


def test_valid_is_a_class_mixed_fixed_head_of_train(folder, tmp_path):
  root, images = folder
  everything = _relative_paths(root, 'train_and_valid')
  valid, train = _relative_paths(root, 'valid'), _relative_paths(root, 'train')
  assert valid + train == everything
  assert sorted(everything) == sorted(p for p in images
                                      if p.startswith('train/'))
  labels = [images[p][1] for p in everything]
  assert len({images[p][1] for p in valid}) > 1
  assert labels != sorted(labels)  # not one class after another
  # A pure function of the folder's contents: a copy elsewhere gives the
  # same order.
  copy = str(tmp_path / 'copy')
  shutil.copytree(root, copy)
  assert _relative_paths(copy, 'train_and_valid') == everything


@pytest.mark.parametrize('count', [2, 3])
@pytest.mark.parametrize('split', ['train', 'valid', 'test'])
def test_process_shards_are_disjoint_and_cover_the_split(folder, split, count):
  root, _ = folder
  shards = [_relative_paths(root, split, index, count)
            for index in range(count)]
  for index, shard in enumerate(shards):
    assert len(shard) == sources.num_examples(
        NAME, split, root, fashion_mnist_dir='', process_index=index,
        process_count=count)
  assert sum(shards, []) == _relative_paths(root, split)


def test_load_split_yields_rgb_uint8_with_train_labels(folder):
  root, images = folder
  # The test folder is read sorted by class, then name.
  tests = sorted((path, value) for path, value in images.items()
                 if path.startswith('test/'))
  loaded = _load(root, 'test')
  assert len(loaded) == len(tests)
  for (image, label), (path, (pixels, want_label)) in zip(loaded, tests):
    assert image.dtype == np.uint8 and label.dtype == np.int32
    assert image.shape == pixels.shape and label == want_label
    if path.endswith('.png'):
      # Lossless: exactly the pixels written, grayscale in 3 channels.
      np.testing.assert_array_equal(image, pixels)


def test_train_batches_and_eval_batches_from_variable_sizes(folder):
  root, images = folder
  common = dict(data_dir=root, fashion_mnist_dir='', global_batch_size=8,
                num_local_devices=2, process_index=0, process_count=1,
                image_size=SIZE)
  pretrain = list(itertools.islice(
      pipelines.pretrain_batches(NAME, seed=0, **common), 5))  # one epoch
  for batch in pretrain:
    assert batch['view1'].shape == batch['view2'].shape == (2, 4, SIZE, SIZE,
                                                            3)
    assert batch['view1'].dtype == np.uint8
  labels = np.concatenate([b['labels'].ravel() for b in pretrain])
  assert sorted(labels) == sorted(label for p, (_, label) in images.items()
                                  if p.startswith('train/'))
  linear = next(pipelines.linear_train_batches(NAME, seed=0, **common))
  assert linear['images'].shape == (2, 4, SIZE, SIZE, 3)
  batches = list(pipelines.eval_batches(NAME, 'test', crop_fraction=0.875,
                                        **common))
  assert len(batches) == 2  # 9 test images, 8 per batch
  mask = np.concatenate([b['mask'].ravel() for b in batches])
  labels = np.concatenate([b['labels'].ravel() for b in batches])[mask]
  assert mask.sum() == 9 and sorted(labels) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
  assert batches[0]['images'].shape == (2, 4, SIZE, SIZE, 3)


def test_val_or_validation_is_the_test_split_when_there_is_no_test(tmp_path):
  for name in ('val', 'validation'):
    root = str(tmp_path / name)
    make_folder(root, test_folder=name, num_per_class=1)
    assert sources.num_examples(NAME, 'test', root, fashion_mnist_dir='') == 9
  # test/ wins over val/.
  make_folder(str(tmp_path / 'both'), test_folder='val', num_per_class=1)
  _write(str(tmp_path / 'both' / 'test' / 'cat' / 'only.png'), 0)
  assert sources.num_examples(NAME, 'test', str(tmp_path / 'both'),
                              fashion_mnist_dir='') == 1


def _write_bytes(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _no_train(root):
  os.makedirs(os.path.join(root, 'test', 'ant'))


def _no_classes(root):
  os.makedirs(os.path.join(root, 'train'))
  _write_bytes(os.path.join(root, 'train', '.hidden'), b'')


def _class_without_images(root):
  make_folder(root, num_per_class=1, test_folder=None)
  os.makedirs(os.path.join(root, 'train', 'emu'))
  _write_bytes(os.path.join(root, 'train', 'emu', '.keep'), b'')


def _text_file(root):
  make_folder(root, num_per_class=1, test_folder=None)
  _write_bytes(os.path.join(root, 'train', 'bee', 'notes.txt'), b'hello')


def _two_text_files(root):
  _text_file(root)
  _write_bytes(os.path.join(root, 'train', 'dog', 'list.csv'), b'a,b')


def _nested_folder(root):
  make_folder(root, num_per_class=1)
  _write(os.path.join(root, 'train', 'bee', 'more', 'bee9.png'), 1)


def _loose_file(root):
  make_folder(root, num_per_class=1, test_folder=None)
  _write_bytes(os.path.join(root, 'train', 'stray.jpg'), b'')


def _empty_image(root):
  make_folder(root, num_per_class=1, test_folder=None)
  _write_bytes(os.path.join(root, 'train', 'cat', 'blank.jpg'), b'')


def _renamed_text(root):
  make_folder(root, num_per_class=1, test_folder=None)
  _write_bytes(os.path.join(root, 'train', 'cat', 'fake.JPG'), b'not a jpeg')


def _three_bad_headers(root):
  _renamed_text(root)
  _write_bytes(os.path.join(root, 'train', 'dog', 'a.png'), b'')
  _write_bytes(os.path.join(root, 'train', 'dog', 'b.gif'), b'GIF')


def _unknown_test_class(root):
  make_folder(root, num_per_class=1)
  _write(os.path.join(root, 'test', 'yak', 'y.png'), 0)


@pytest.mark.parametrize('make,where,message', [
    (None, '', 'does not exist or is not a folder: pass '
               '--config.dataset.data_dir=<folder> with images in'),
    (_no_train, '', 'has no train/ folder: put the images in'),
    (_no_classes, 'train', 'has no class folders: put the images of each '
                           'class in a folder of its own'),
    (_class_without_images, 'train/emu',
     'holds no images: add JPEG, PNG, GIF or BMP images to it or remove it.'),
    (_text_file, 'train/bee/notes.txt',
     "is not a JPEG, PNG, GIF or BMP image (by its extension): remove it "
     "(names starting with '.' are ignored)."),
    (_two_text_files, 'train/bee/notes.txt', 'remove them'),
    (_loose_file, 'train/stray.jpg', 'is not in a class folder: move it into'),
    (_nested_folder, 'train/bee/more',
     'is a folder inside a class folder: images go directly in <class>/: '
     'move theirs up, or remove it.'),
    (_empty_image, 'train/cat/blank.jpg',
     'is empty: remove or replace it.'),
    (_renamed_text, 'train/cat/fake.JPG',
     'is not a JPEG, PNG, GIF or BMP image (by its first bytes): remove or '
     'replace it.'),
    (_three_bad_headers, 'train/cat/fake.JPG',
     'are empty, unreadable or not JPEG, PNG, GIF or BMP images (by their '
     'first bytes), e.g. '),
    (_unknown_test_class, 'test/yak', 'is a class that'),
])
def test_bad_folder_is_one_line_naming_the_path(tmp_path, make, where,
                                                message):
  root = str(tmp_path / 'root')
  if make:
    make(root)
  with pytest.raises(DatasetError) as error:
    sources.dataset_spec(NAME, root, fashion_mnist_dir='')
  text = str(error.value)
  assert '\n' not in text
  assert os.path.join(root, where).rstrip('/') in text and message in text
  if make is _two_text_files:
    assert text.startswith(f'2 files in {root}/train are not JPEG')
  if make is _three_bad_headers:
    assert text.startswith(f'3 files in {root}/train are empty')


def test_missing_data_dir_or_test_folder_says_what_to_pass(tmp_path):
  with pytest.raises(DatasetError, match='pass --config.dataset.data_dir='):
    sources.num_examples(NAME, 'train', None, fashion_mnist_dir='')
  root = str(tmp_path)
  make_folder(root, num_per_class=1, test_folder=None)
  assert 'test' not in sources.dataset_spec(
      NAME, root, fashion_mnist_dir='').split_sizes
  with pytest.raises(DatasetError,
                     match=f'^{root} has no test, val or validation folder'):
    sources.load_split(NAME, 'test', root, fashion_mnist_dir='',
                       process_index=0, process_count=1,
                       shuffle_files=False, seed=0)


def _truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def test_image_that_fails_to_decode_in_tf_data_is_named(tmp_path):
  root = str(tmp_path)
  make_folder(root, num_per_class=2)
  truncated = os.path.join(root, 'train', 'cat', 'cat0.jpg')
  _truncate(truncated)
  common = dict(data_dir=root, fashion_mnist_dir='', global_batch_size=4,
                num_local_devices=2, process_index=0, process_count=1,
                image_size=SIZE)
  # It passes the check of first bytes; decoding fails inside tf.data.
  sources.dataset_spec(NAME, root, fashion_mnist_dir='')
  with pytest.raises(DatasetError) as error:
    list(itertools.islice(pipelines.pretrain_batches(NAME, seed=0, **common),
                          3))
  assert str(error.value) == (f'{truncated} cannot be decoded (truncated or '
                              'corrupt): remove or replace it.')
  _truncate(os.path.join(root, 'test', 'dog', 'dog0.jpg'))
  _truncate(os.path.join(root, 'test', 'bee', 'bee0.jpg'))
  with pytest.raises(DatasetError) as error:
    list(pipelines.eval_batches(NAME, 'test', crop_fraction=1.0, **common))
  assert str(error.value) == (
      f"2 images of {root} (split 'test') cannot be decoded (truncated or "
      f'corrupt), e.g. {root}/test/bee/bee0.jpg: remove or replace them.')


def _run(module, *flags):
  return subprocess.run([sys.executable, '-m', module, *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_pretrain_then_linear_eval_on_an_image_folder(folder, tmp_path):
  root, _ = folder
  workdir = str(tmp_path / 'pretrain')
  pretrain = _run('experiments.pretrain', *tiny.pretrain_flags(
      data_dir=root, fashion_mnist_dir='/unused', workdir=workdir,
      total_steps=2), f'--config.dataset.name={NAME}')
  assert pretrain.returncode == 0, pretrain.stderr
  assert f'pretraining on {NAME}: 40 images' in pretrain.stdout
  evaluation = _run(
      'experiments.linear_eval', f'--workdir={tmp_path / "eval"}',
      '--config=experiments/configs/linear_eval.py:demo',
      f'--config.checkpoint={workdir}', f'--config.dataset.name={NAME}',
      f'--config.dataset.data_dir={root}',
      f'--config.dataset.image_size={SIZE}',
      '--config.model.encoder.width_multiplier=0.125',
      '--config.model.encoder.small_image_stem=True',
      '--config.probe.num_l2=2', '--config.probe.lbfgs_iterations=5',
      '--config.eval.global_batch_size=8')
  assert evaluation.returncode == 0, evaluation.stderr
  with open(tmp_path / 'eval' / 'results.json') as f:
    results = json.load(f)
  assert results['protocol'] == 'precomputed'
  assert results['num_examples'] == 9 and 0 <= results['top1'] <= 1


def _truncated_jpeg(root):
  make_folder(root, num_per_class=4, test_folder=None)
  _truncate(os.path.join(root, 'train', 'dog', 'dog2.JPEG'))


@pytest.mark.parametrize('make,message', [
    # Found when the folder is listed, before any work.
    (_renamed_text, 'train/cat/fake.JPG is not a JPEG, PNG, GIF or BMP image '
                    '(by its first bytes): remove or replace it.'),
    # Found by tf.data in the first batch, inside the training loop.
    (_truncated_jpeg, 'train/dog/dog2.JPEG cannot be decoded (truncated or '
                      'corrupt): remove or replace it.'),
], ids=['first_bytes', 'decode'])
def test_unreadable_image_exits_2_with_one_error_line(tmp_path, make,
                                                      message):
  root = str(tmp_path / 'root')
  make(root)
  result = _run('experiments.pretrain', *tiny.pretrain_flags(
      data_dir=root, fashion_mnist_dir='/unused',
      workdir=str(tmp_path / 'run'), total_steps=2),
      f'--config.dataset.name={NAME}')
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error:')]
  assert errors == [f'error: {root}/{message}'], result.stderr


@pytest.mark.parametrize('test_folder,num_per_class,message', [
    (None, 4, 'has no test, val or validation folder'),
    ('test', 1, "split 'valid' of image_folder has no examples ('valid' holds "
                'out a tenth of the training images: at least 10 are needed)'),
], ids=['no_test_folder', 'empty_valid'])
def test_linear_eval_checks_its_splits_before_any_work(tmp_path, test_folder,
                                                       num_per_class, message):
  root = str(tmp_path / 'root')
  make_folder(root, num_per_class=num_per_class, test_folder=test_folder)
  config = tiny.linear_eval_config()
  config.update(protocol='precomputed', encoder_init='random', checkpoint='')
  config.dataset.update(name=NAME, data_dir=root)
  with pytest.raises(DatasetError, match=re.escape(message)):
    train_loop.linear_evaluation(config, str(tmp_path / 'eval'))
  assert not os.path.exists(tmp_path / 'eval')


def test_linear_eval_workdir_follows_the_folder_not_its_spelling(tmp_path,
                                                                 capsys):
  root = str(tmp_path / 'root')
  make_folder(root, num_per_class=3)
  config = tiny.linear_eval_config()
  config.update(protocol='precomputed', encoder_init='random', checkpoint='')
  config.probe.update(num_l2=1, lbfgs_iterations=2)
  config.dataset.update(name=NAME, data_dir=root)
  workdir = str(tmp_path / 'eval')
  first = train_loop.linear_evaluation(config, workdir)
  # Another spelling of the same folder is the same evaluation.
  config.dataset.data_dir = os.path.relpath(root) + '/'
  assert train_loop.linear_evaluation(config, workdir) == first
  # Images added after the features were cached: they are embedded again.
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  os.remove(os.path.join(workdir, 'results.json'))
  _write(os.path.join(root, 'train', 'ant', 'new.png'), 1)
  image_folder.scan.cache_clear()  # a new run lists the folder again
  capsys.readouterr()
  train_loop.linear_evaluation(config, workdir)
  assert 'train_process0.npz was embedded with other settings' in (
      capsys.readouterr().out)
