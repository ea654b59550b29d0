"""Device-shaped batches: shapes, per-image crops, exact resume, exact eval."""

import itertools
import re

import numpy as np
import pytest

from byol_jax import parallel
from byol_jax.data import pipelines
from byol_jax.data import sources
from tests.test_data_fashion_mnist import NUM_TEST, NUM_TRAIN, write_fashion_mnist

SIZE = 16  # output side in pixels


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  source = str(tmp_path_factory.mktemp('source'))
  arrays = write_fashion_mnist(source)
  return dict(data_dir=str(tmp_path_factory.mktemp('tfds')),
              fashion_mnist_dir=source), arrays


def _pretrain(dirs, steps, **kwargs):
  kwargs = dict(global_batch_size=4, num_local_devices=2, process_index=0,
                process_count=1, image_size=SIZE, seed=3) | kwargs
  batches = pipelines.pretrain_batches('fashion_mnist', **dirs[0], **kwargs)
  return list(itertools.islice(batches, steps))


def test_pretrain_batches_are_device_shaped_two_view_crops(dirs):
  batches = _pretrain(dirs, 5)  # one epoch: 20 images, 4 per step
  for batch in batches:
    assert set(batch) == {'view1', 'view2', 'labels'}
    for view in ('view1', 'view2'):
      assert batch[view].shape == (2, 2, SIZE, SIZE, 3)
      assert batch[view].dtype == np.uint8
    assert batch['labels'].shape == (2, 2)
    assert batch['labels'].dtype == np.int32
  views1 = np.concatenate([b['view1'].reshape(-1, SIZE, SIZE, 3)
                           for b in batches])
  views2 = np.concatenate([b['view2'].reshape(-1, SIZE, SIZE, 3)
                           for b in batches])
  # All train images are the same picture, so differences come from crops:
  # every image gets its own crop, and its two views differ.
  assert len({v.tobytes() for v in views1}) == len(views1)
  assert all((v1 != v2).any() for v1, v2 in zip(views1, views2))
  # One epoch shows every training example exactly once.
  labels = np.concatenate([b['labels'].ravel() for b in batches])
  assert sorted(labels) == sorted(np.arange(NUM_TRAIN) % 10)


def test_pretrain_is_deterministic_and_resumes_exactly(dirs):
  # 12 steps of 4 cross two epoch boundaries (20 examples per epoch).
  full = _pretrain(dirs, 12)
  resumed = _pretrain(dirs, 5, start_step=7)
  for want, got in zip(full[7:], resumed, strict=True):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Epochs are reshuffled: their label orders differ.
  first, second = (np.concatenate([b['labels'].ravel() for b in full[i:i + 5]])
                   for i in (0, 5))
  assert not np.array_equal(first, second)
  other_seed = _pretrain(dirs, 1, seed=4)[0]
  assert not np.array_equal(other_seed['view1'], full[0]['view1'])


def test_large_dataset_path_gives_the_same_batches(dirs, monkeypatch):
  # Datasets too big for memory are shuffled encoded and decoded late; the
  # batches must not depend on which path a dataset takes.
  in_memory = _pretrain(dirs, 7)
  monkeypatch.setattr(pipelines, '_IN_MEMORY_BYTES', 0)
  streamed = _pretrain(dirs, 7)
  for want, got in zip(in_memory, streamed, strict=True):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_block_shuffle_keeps_epochs_whole_and_resumable(dirs):
  # Windows of 6 over 20 examples: blocks of 6, 6, 6, 2 permuted separately.
  full = _pretrain(dirs, 10, shuffle_window=6)
  for epoch in (full[:5], full[5:]):
    labels = np.concatenate([b['labels'].ravel() for b in epoch])
    assert sorted(labels) == sorted(np.arange(NUM_TRAIN) % 10)
  resumed = _pretrain(dirs, 3, shuffle_window=6, start_step=6)
  for want, got in zip(full[6:9], resumed, strict=True):
    np.testing.assert_array_equal(got['view1'], want['view1'])


def test_pretrain_full_crops_are_the_resized_image(dirs):
  (batch,) = _pretrain(dirs, 1, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0))
  np.testing.assert_array_equal(batch['view1'], batch['view2'])
  assert (batch['view1'] == batch['view1'][0, 0]).all()


def test_processes_train_on_disjoint_shards(dirs):
  # Test labels are unique; 7 examples make shards of 3 and 4.
  shards = []
  for index in range(2):
    batches = _pretrain(dirs, 2, process_index=index, process_count=2,
                        split='test')
    stream = np.concatenate([b['labels'].ravel() for b in batches])
    shard_size = sources.num_examples(
        'fashion_mnist', 'test', dirs[0]['data_dir'],
        fashion_mnist_dir=dirs[0]['fashion_mnist_dir'], process_index=index,
        process_count=2)
    # A process's first epoch is a permutation of its own shard.
    shards.append(set(stream[:shard_size]))
    assert len(shards[-1]) == shard_size
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(NUM_TEST))


@pytest.mark.parametrize('batch, message', [
    (6, 'global batch size 6 does not divide across 4 devices; set '
        '--config.{flag} to a multiple of 4'),
    (0, 'global batch size 0 must be positive; set --config.{flag} to a '
        'multiple of 4'),
    (-4, 'global batch size -4 must be positive; set --config.{flag} to a '
         'multiple of 4'),
], ids=['not_divisible', 'zero', 'negative'])
@pytest.mark.parametrize('pipeline, kwargs, flag', [
    (pipelines.pretrain_batches, dict(seed=0), 'training.global_batch_size'),
    (pipelines.linear_train_batches, dict(seed=0),
     'training.global_batch_size'),
    (pipelines.eval_batches, dict(split='test', crop_fraction=1.0),
     'eval.global_batch_size'),
])
def test_bad_batch_is_the_training_loops_value_error(dirs, pipeline, kwargs,
                                                     flag, batch, message):
  # 2 processes of 2 devices: the check counts the devices of all processes.
  with pytest.raises(ValueError) as error:
    pipeline('fashion_mnist', **dirs[0], global_batch_size=batch,
             num_local_devices=2, process_index=0, process_count=2,
             image_size=SIZE, **kwargs)
  assert str(error.value) == message.format(flag=flag)
  # One check: the same words as the training loops' (parallel).
  with pytest.raises(ValueError, match=f'^{re.escape(str(error.value))}$'):
    parallel.check_batch_divisible(batch, 4, flag=flag)


def test_linear_train_batches_flip_and_resume(dirs):
  kwargs = dict(global_batch_size=4, num_local_devices=2, process_index=0,
                process_count=1, image_size=SIZE, seed=0,
                crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0))
  full = list(itertools.islice(pipelines.linear_train_batches(
      'fashion_mnist', **dirs[0], **kwargs), 6))
  resumed = next(pipelines.linear_train_batches(
      'fashion_mnist', **dirs[0], start_step=5, **kwargs))
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], full[5][key])
  images = np.concatenate([b['images'].reshape(-1, SIZE, SIZE, 3)
                           for b in full])
  assert all(b['mask'].all() and b['mask'].shape == (2, 2) for b in full)
  # Whole-image crops of one picture: each output is it or its mirror image.
  upright = images[0] if images[0][0, 0, 0] < images[0][0, -1, 0] else (
      images[0][:, ::-1])
  flipped = np.array([(img == upright[:, ::-1]).all() for img in images])
  assert all((img == upright).all() or f for img, f in zip(images, flipped))
  assert 0 < flipped.sum() < len(images)


@pytest.mark.parametrize('global_batch_size,process_count', [
    (2, 1), (4, 1), (6, 1), (16, 1), (4, 2), (12, 2)])
def test_eval_counts_every_example_exactly_once(dirs, global_batch_size,
                                                process_count):
  _, arrays = dirs
  test_images, test_labels = arrays['test']
  num_batches = pipelines.num_eval_batches(NUM_TEST, global_batch_size,
                                           process_count)
  labels_seen = []
  for index in range(process_count):
    batches = list(pipelines.eval_batches(
        'fashion_mnist', 'test', **dirs[0],
        global_batch_size=global_batch_size, num_local_devices=2,
        process_index=index, process_count=process_count, image_size=28,
        crop_fraction=1.0))
    assert len(batches) == num_batches  # the same on every process
    per_device = global_batch_size // (2 * process_count)
    for batch in batches:
      assert batch['images'].shape == (2, per_device, 28, 28, 3)
      assert batch['mask'].dtype == bool
      mask = batch['mask']
      assert (batch['images'][~mask] == 0).all()
      assert (batch['labels'][~mask] == 0).all()
      for image, label in zip(batch['images'][mask], batch['labels'][mask]):
        # Whole image, 28 -> 28 px: the stored pixels, unchanged.
        np.testing.assert_array_equal(image[..., 0],
                                      test_images[test_labels == label][0])
      labels_seen += list(batch['labels'][mask])
  assert sorted(labels_seen) == list(range(NUM_TEST))


def test_eval_on_valid_split_is_the_held_out_train_head(dirs):
  batches = list(pipelines.eval_batches(
      'fashion_mnist', 'valid', **dirs[0], global_batch_size=4,
      num_local_devices=1, process_index=0, process_count=1, image_size=SIZE,
      crop_fraction=0.875))
  assert sum(b['mask'].sum() for b in batches) == sources.num_examples(
      'fashion_mnist', 'valid', dirs[0]['data_dir'],
      fashion_mnist_dir=dirs[0]['fashion_mnist_dir'])
