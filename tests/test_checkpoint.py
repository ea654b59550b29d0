"""Atomic npz checkpoints: round trip, retention, and clear errors."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorflow import errors as tf_errors

from byol_jax import checkpoint


def _tree():
  return dict(step=jnp.array(7, jnp.int32),
              params={'res_net18/~/initial_conv_1': {'w': jnp.ones((3, 3, 3, 8))},
                      'classifier': {'w': jnp.zeros((8, 10)),
                                     'b': jnp.arange(10.0)}})


def test_round_trip_and_metadata(tmp_path):
  path = checkpoint.save(str(tmp_path), 7, _tree(), {'kind': 'test'}, keep=2)
  arrays, metadata = checkpoint.load_arrays(path)
  assert metadata == {'kind': 'test', 'step': 7}
  restored = checkpoint.restore_into(_tree(), arrays, path)
  jax.tree.map(np.testing.assert_array_equal, restored, _tree())
  # Readable without byol_jax: plain numpy, no pickle.
  with np.load(path, allow_pickle=False) as data:
    np.testing.assert_array_equal(data['params/classifier/b'], np.arange(10.0))


def test_keeps_the_newest_and_ignores_temporary_files(tmp_path):
  for step in (1, 2, 3):
    checkpoint.save(str(tmp_path), step, _tree(), {}, keep=2)
  (tmp_path / 'checkpoint_000000009.npz.tmp-123').write_bytes(b'partial')
  assert checkpoint.all_steps(str(tmp_path)) == [2, 3]
  assert checkpoint.latest_path(str(tmp_path)).endswith(
      'checkpoint_000000003.npz')
  assert not [n for n in os.listdir(tmp_path) if n.startswith(
      'checkpoint_000000001')]


def _truncate(path):
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


@pytest.mark.parametrize('damage', [
    _truncate,
    lambda path: pathlib.Path(path).write_text('not a zip file'),
    # Object arrays need pickle; numpy's error suggests allow_pickle=True.
    lambda path: np.savez(path, a=np.array([{}], dtype=object)),
    lambda path: np.savez(path, a=np.zeros(3)),  # no metadata
], ids=['truncated', 'not_zip', 'pickled', 'no_metadata'])
def test_corrupt_file_is_a_clear_error(tmp_path, damage):
  path = checkpoint.save(str(tmp_path), 1, _tree(), {}, keep=1)
  damage(path)
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.load_arrays(path)
  assert str(error.value) == (
      f'checkpoint {path} is corrupt or not a byol_jax checkpoint; pass '
      "another file, or if it is the newest in a workdir's checkpoints/, "
      'delete it to resume from the one before')


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
    checkpoint.load_arrays(str(tmp_path / 'nope.npz'))


def test_architecture_mismatch_names_parameter_and_shapes(tmp_path):
  path = checkpoint.save(str(tmp_path), 1, _tree(), {}, keep=1)
  arrays, _ = checkpoint.load_arrays(path)
  other = _tree()
  other['params']['classifier']['w'] = jnp.zeros((16, 10))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"params/classifier/w.*\(8, 10\).*\(16, 10\).*"
                     r"match the config \(depth, width, heads\)"):
    checkpoint.restore_into(other, arrays, path)
  other = _tree()
  other['params']['classifier']['b'] = jnp.zeros(3)  # a 3-class dataset
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"params/classifier/b.*the dataset has another "
                     'number of classes'):
    checkpoint.restore_into(other, arrays, path)
  other = _tree()
  other['params']['extra'] = {'w': jnp.zeros(3)}
  with pytest.raises(checkpoint.CheckpointError, match='params/extra/w'):
    checkpoint.restore_into(other, arrays, path)


def test_background_saver_writes_a_copy_and_keeps_the_newest(tmp_path):
  saver = checkpoint.BackgroundSaver(str(tmp_path), keep=2)
  tree = jax.tree.map(np.array, _tree())
  for step in (1, 2, 3):
    saver.save(step, tree, {'kind': 'test'})
    # The caller may reuse its buffers at once (the next step's donation).
    tree['params']['classifier']['b'] += 1
  saver.wait()
  assert checkpoint.all_steps(str(tmp_path)) == [2, 3]
  arrays, metadata = checkpoint.load_arrays(
      checkpoint.latest_path(str(tmp_path)))
  assert metadata['step'] == 3
  np.testing.assert_array_equal(arrays['params/classifier/b'],
                                np.arange(10.0) + 2)


def test_background_saver_raises_write_errors_in_the_caller(tmp_path):
  (tmp_path / 'file').write_text('')
  saver = checkpoint.BackgroundSaver(str(tmp_path / 'file' / 'sub'), keep=1)
  saver.save(1, jax.tree.map(np.array, _tree()), {})
  # A folder below a file cannot be created: tf.io.gfile's error, raised
  # here rather than lost in the writer thread.
  with pytest.raises(tf_errors.FailedPreconditionError):
    saver.wait()
  saver.wait()  # reported once
