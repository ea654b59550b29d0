"""Atomic, pickle-free checkpoints: one `.npz` file per saved step.

Each file holds every array of the state under a '/'-joined path key (e.g.
`online_params/res_net18/~/initial_conv/w`) plus `__metadata__`, a JSON
string with the step and the run's config. `numpy.load` reads it without
byol_jax installed, and loading never executes code from the file (npz with
`allow_pickle=False`). A file is written under a temporary name and renamed
into place, so a run killed mid-write never leaves a file that looks complete.
"""

import io
import json
import os
import re
import threading
import zipfile
from typing import Any

import jax
import numpy as np
from tensorflow import errors as tf_errors
from tensorflow.io import gfile

_PATTERN = re.compile(r'^checkpoint_(\d{9})\.npz$')
_METADATA_KEY = '__metadata__'


class CheckpointError(Exception):
  """A checkpoint is missing, unreadable, or does not fit the model."""


def path_key(path: tuple[Any, ...]) -> str:
  """'/'-joined name of a pytree path (dict keys, NamedTuple fields, indices)."""
  parts = []
  for entry in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(entry, attribute):
        parts.append(str(getattr(entry, attribute)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """{path key: numpy array} for every leaf of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_key(path): np.asarray(leaf) for path, leaf in leaves}


def save(directory: str, step: int, tree: Any, metadata: dict[str, Any],
         keep: int) -> str:
  """Writes `tree` as `<directory>/checkpoint_<step>.npz`, atomically.

  Args:
    directory: checkpoint folder (local path or any `tf.io.gfile` URL).
    step: the training step the state is at.
    tree: a pytree of host arrays (already fetched from the devices).
    metadata: JSON-serialisable facts stored beside the arrays.
    keep: how many of the newest checkpoints to keep; older ones are removed.

  Returns:
    The path written.
  """
  gfile.makedirs(directory)
  final_path = os.path.join(directory, f'checkpoint_{step:09d}.npz')
  write(final_path, flatten(tree), dict(metadata, step=step))
  for old_step in all_steps(directory)[:-keep]:
    gfile.remove(os.path.join(directory, f'checkpoint_{old_step:09d}.npz'))
  return final_path


def write(path: str, arrays: dict[str, np.ndarray],
          metadata: dict[str, Any]) -> None:
  """Writes {path key: array} and JSON `metadata` as one npz file, atomically.

  The file appears under its final name only once complete (temporary name,
  then rename), so readers never see half a checkpoint.
  """
  arrays = dict(arrays)
  arrays[_METADATA_KEY] = np.array(json.dumps(metadata))
  temp_path = f'{path}.tmp-{os.getpid()}'
  # zipfile needs a seekable, readable file, which a GFile being written is
  # not: serialise in memory, then write the bytes in one go.
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with gfile.GFile(temp_path, 'wb') as f:
    f.write(buffer.getvalue())
  gfile.rename(temp_path, path, overwrite=True)


class BackgroundSaver:
  """Writes checkpoints (`save` above) in a background thread, one at a time.

  `save` returns once the state is copied into host memory; serialising and
  writing then overlap the following training steps. A write still running
  when the next `save` or `wait` comes is waited for, so at most one write
  is in flight and its errors are raised in the training thread.
  """

  def __init__(self, directory: str, keep: int):
    self._directory = directory
    self._keep = keep
    self._thread: threading.Thread | None = None
    self._error: BaseException | None = None

  def save(self, step: int, tree: Any, metadata: dict[str, Any]) -> None:
    """Starts writing `tree` (host arrays) as the checkpoint of `step`."""
    self.wait()
    # Own copies: on CPU `np.asarray` of a device array can share its
    # buffer, which the next (donating) step would overwrite mid-write.
    tree = jax.tree.map(np.array, tree)
    self._thread = threading.Thread(
        target=self._write, args=(step, tree, metadata),
        name=f'checkpoint-{step}')
    self._thread.start()

  def _write(self, step: int, tree: Any, metadata: dict[str, Any]) -> None:
    try:
      save(self._directory, step, tree, metadata, keep=self._keep)
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e  # re-raised by wait(), in the training thread

  def wait(self) -> None:
    """Blocks until the pending write is on disk; raises its error if any."""
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._error is not None:
      error, self._error = self._error, None
      raise error


def all_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in `directory`, ascending."""
  if not gfile.isdir(directory):
    return []
  steps = [int(m.group(1)) for name in gfile.listdir(directory)
           if (m := _PATTERN.match(name))]
  return sorted(steps)


def latest_path(directory: str) -> str | None:
  """Path of the newest complete checkpoint in `directory`, or None."""
  steps = all_steps(directory)
  if not steps:
    return None
  return os.path.join(directory, f'checkpoint_{steps[-1]:09d}.npz')


def load_arrays(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a checkpoint file into ({path key: array}, metadata)."""
  if not gfile.exists(path):
    raise CheckpointError(
        f'checkpoint {path} does not exist; pass the path of a '
        'checkpoint_*.npz file or a folder that contains one')
  try:
    with gfile.GFile(path, 'rb') as f:
      with np.load(f, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    metadata = json.loads(str(arrays.pop(_METADATA_KEY)))
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
          tf_errors.OpError) as e:
    # Not numpy's words: they suggest allow_pickle=True, which would let the
    # file run code. The cause stays chained for a traceback.
    raise CheckpointError(
        f'checkpoint {path} is corrupt or not a byol_jax checkpoint; pass '
        "another file, or if it is the newest in a workdir's checkpoints/, "
        'delete it to resume from the one before') from e
  return arrays, metadata


def restore_into(template: Any, arrays: dict[str, np.ndarray], path: str,
                 prefix: str = '') -> Any:
  """Fills `template`'s structure with the arrays stored under its keys.

  Args:
    template: pytree whose leaves have `.shape` and `.dtype` (arrays or
      `jax.ShapeDtypeStruct`s) describing what the model expects.
    arrays: {path key: array} from `load_arrays`.
    path: the checkpoint's path, for error messages.
    prefix: prepended (with '/') to each template key before the look-up,
      e.g. 'online_params' to read only the online network.

  Returns:
    A pytree like `template` holding numpy arrays.

  Raises:
    CheckpointError: naming the first missing or differently shaped array.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  restored = []
  for leaf_path, leaf in leaves:
    key = path_key(leaf_path)
    key = f'{prefix}/{key}' if prefix else key
    if key not in arrays:
      raise CheckpointError(
          f'checkpoint {path} has no array {key!r}: it was written for a '
          f'different architecture{_what_it_has(arrays, key)}; match the '
          'config to the checkpoint')
    value = arrays[key]
    if value.shape != tuple(leaf.shape):
      other_classes = ('classifier' in key and
                       value.shape[-1:] != tuple(leaf.shape)[-1:])
      fix = ('the dataset has another number of classes than the one it was '
             'trained on; use a new --workdir' if other_classes else
             'match the config (depth, width, heads) to the checkpoint')
      raise CheckpointError(
          f'checkpoint {path} does not fit the model: {key!r} has shape '
          f'{value.shape} in the checkpoint but {tuple(leaf.shape)} in the '
          f'model; {fix}')
    restored.append(value.astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, restored)


def _what_it_has(arrays: dict[str, np.ndarray], missing: str) -> str:
  """', which has <key> <shape> instead' for the stored key most like `missing`.

  Most alike = longest shared run of '/'-separated parts from the front, then
  from the back: a ResNet-18 config meeting a ResNet-50 file gets
  `online_params/res_net50/~/initial_conv/w` for
  `online_params/res_net18/~/initial_conv/w`.
  """
  parts = missing.split('/')
  def run(a, b):
    n = 0
    for x, y in zip(a, b):
      if x != y:
        break
      n += 1
    return n
  def likeness(key):
    other = key.split('/')
    return run(parts, other), run(parts[::-1], other[::-1])
  best = max(arrays, key=likeness, default=None)
  if best is None or likeness(best) == (0, 0):
    return ''
  return f', which has {best!r} {arrays[best].shape} instead'
