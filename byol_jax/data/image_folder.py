"""Listing and checking a folder of images in class folders.

The layout is ImageNet's and torchvision's:

  ROOT/train/<class>/<image>   required
  ROOT/test/<class>/<image>    optional; else val/ or validation/

The classes are the sorted names of train/'s subfolders, label i being the
i-th; the test folder's classes must be among them. Images are JPEG, PNG,
GIF or BMP files (what tf.io.decode_image reads), recognised by their
extension in any case. Names starting with '.' are ignored; any other file
is an error, so that nothing a user put in the folder is silently skipped.

Listing checks the first bytes of every image (empty files, and files that
do not start like a JPEG, PNG, GIF or BMP, e.g. a text file renamed .jpg),
in a thread pool: for a folder of ImageNet's 1.3 M images that is one small
read per file. A file that passes this check but still does not decode
(e.g. a truncated JPEG) fails later, inside tf.data; `find_problems` then
finds it (see sources.undecodable_files).

The train folder's images are listed in a fixed pseudo-random order: sorted
by a SHA-256 hash of their path relative to train/. The order is thus a pure
function of the folder's contents (the same on every process, in every run,
whatever the run's seed), mixes the classes (so a held-out head of the list
has every class and a shuffle window sees all of them), and adding or
removing an image leaves the others in the same relative order. Folders are
read through tf.io.gfile, as TFDS's are (only local ones are tested).
"""

from collections.abc import Callable, Sequence
from concurrent import futures
import functools
import hashlib
import os
from typing import NamedTuple

import tensorflow as tf

from byol_jax.data.errors import DatasetError

NAME = 'image_folder'

IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
# Folders tried, in this order, for the test split.
TEST_FOLDERS = ('test', 'val', 'validation')

# How each format's files start (BMP's 'BM' is short, but decoding is the
# real check; this one catches empty and misnamed files up front).
_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a',
               b'BM')
_HEADER_BYTES = max(len(s) for s in _SIGNATURES)
# Listing and header reads wait on the filesystem, not on the CPU: many
# threads hide the latency of network filesystems and GCS.
_IO_THREADS = 32
_PATHS_PER_TASK = 256  # one thread-pool task reads this many headers


class Files(NamedTuple):
  """Images of one split folder, in a fixed order.

  paths: full paths, one per image.
  labels: index of each image's class in Listing.classes.
  """
  paths: tuple[str, ...]
  labels: tuple[int, ...]


class Listing(NamedTuple):
  """What a listed image folder holds.

  classes: the class names, sorted; label i is classes[i].
  train: train/'s images in the fixed pseudo-random order (module docstring).
  test: the test folder's images, sorted by class and name; None if ROOT has
    none of TEST_FOLDERS.
  """
  classes: tuple[str, ...]
  train: Files
  test: Files | None


def files_error(bad: Sequence[str], one: str, many: str,
                fix: str) -> DatasetError:
  """A one-line error about the files or folders `bad` (at least one).

  For one: '<path> <one>: <fix>.'; for several: '<count> <many>, e.g.
  <first path>: <fix>.', where '{it}' in `fix` becomes 'it' or 'them'.
  """
  if len(bad) == 1:
    return DatasetError(f'{bad[0]} {one}: {fix.format(it="it")}.')
  return DatasetError(
      f'{len(bad)} {many}, e.g. {bad[0]}: {fix.format(it="them")}.')


def _in_threads(items: Sequence, work: Callable, threads: int) -> list:
  """[work(item) for item in items], computed by a pool of threads."""
  with futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(work, items))


def find_problems(paths: Sequence[str], check: Callable[[str], str | None],
                  threads: int = _IO_THREADS) -> list[tuple[str, str]]:
  """(path, problem) for each path whose `check(path)` is not None.

  The checks run in a pool of `threads` threads, a few hundred paths per
  task; the result is in the order of `paths`.
  """
  def check_all(chunk):
    return [(path, problem) for path in chunk
            if (problem := check(path)) is not None]
  chunks = [paths[i:i + _PATHS_PER_TASK]
            for i in range(0, len(paths), _PATHS_PER_TASK)]
  return [found for chunk in _in_threads(chunks, check_all, threads)
          for found in chunk]


def _header_problem(path: str) -> str | None:
  """What is wrong with the file's first bytes, or None if nothing is."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      head = f.read(_HEADER_BYTES)
  except (OSError, tf.errors.OpError) as e:
    return f'cannot be read ({str(e).splitlines()[0]})'
  if not head:
    return 'is empty'
  if not head.startswith(_SIGNATURES):
    return 'is not a JPEG, PNG, GIF or BMP image (by its first bytes)'
  return None


def _visible_names(folder: str) -> list[str]:
  """Sorted names in `folder`, without hidden ones (starting with '.').

  gs:// listings mark folders with a trailing '/', which is dropped.
  """
  return sorted(name.rstrip('/') for name in tf.io.gfile.listdir(folder)
                if not name.startswith('.'))


def _class_folders(split_dir: str) -> list[str]:
  """Sorted class folder names of a split folder; no other files allowed."""
  names = _visible_names(split_dir)
  is_dir = _in_threads([os.path.join(split_dir, n) for n in names],
                       tf.io.gfile.isdir, _IO_THREADS)
  loose = [os.path.join(split_dir, n) for n, d in zip(names, is_dir) if not d]
  if loose:
    raise files_error(loose, 'is not in a class folder',
                      f'files in {split_dir} are not in class folders',
                      f'move {{it}} into {split_dir}/<class>/ or remove {{it}}')
  classes = [n for n, d in zip(names, is_dir) if d]
  if not classes:
    raise DatasetError(
        f'{split_dir} has no class folders: put the images of each class in '
        f'a folder of its own, {split_dir}/<class>/<image>.')
  return classes


def _list_split(split_dir: str, classes: Sequence[str],
                labels: dict[str, int]) -> list[tuple[str, str, int]]:
  """(class/name, full path, label) of every image, sorted; checks them all.

  Raises:
    DatasetError: a file that is not an image by its extension, a class
      folder without images, or an image whose first bytes are wrong.
  """
  class_dirs = [os.path.join(split_dir, c) for c in classes]
  listings = _in_threads(class_dirs, _visible_names, _IO_THREADS)
  images, others, empty = [], [], []
  for name, class_dir, entries in zip(classes, class_dirs, listings):
    found = []
    for entry in entries:
      if os.path.splitext(entry)[1].lower() in IMAGE_EXTENSIONS:
        found.append(entry)
      else:
        others.append(os.path.join(class_dir, entry))
    if not found:
      empty.append(class_dir)
    images += [(f'{name}/{e}', os.path.join(class_dir, e), labels[name])
               for e in found]
  kinds = 'JPEG, PNG, GIF or BMP'
  nested = [path for path in others if tf.io.gfile.isdir(path)]
  if nested:
    raise files_error(
        nested, 'is a folder inside a class folder',
        f'folders of {split_dir} are inside class folders',
        'images go directly in <class>/: move theirs up, or remove {it}')
  if others:
    raise files_error(
        others, f'is not a {kinds} image (by its extension)',
        f'files in {split_dir} are not {kinds} images (by their extension)',
        "remove {it} (names starting with '.' are ignored)")
  if empty:
    raise files_error(empty, 'holds no images',
                      f'class folders of {split_dir} hold no images',
                      f'add {kinds} images to {{it}} or remove {{it}}')
  bad = find_problems([path for _, path, _ in images], _header_problem)
  if bad:
    raise files_error(
        [path for path, _ in bad], bad[0][1],
        f'files in {split_dir} are empty, unreadable or not {kinds} images '
        '(by their first bytes)',
        'remove or replace {it}')
  return images


def canonical_root(root: str) -> str:
  """One spelling of the folder `root`, so that 'a/', './a' and '/x/a' agree.

  No trailing '/'; a local folder becomes absolute, its symlinks resolved.
  """
  if '://' in root:
    return root.rstrip('/')
  return os.path.realpath(root)


def fingerprint(files: Files, root: str) -> str:
  """A digest of which images `files` holds, with which labels.

  Paths count relative to `root`, so it does not depend on how the root is
  spelled; an image added, removed or moved to another class changes it.
  """
  digest = hashlib.sha256()
  for path, label in zip(files.paths, files.labels):
    digest.update(f'{label} {os.path.relpath(path, root)}\n'.encode('utf-8'))
  return digest.hexdigest()


def _order_key(relative_path: str) -> bytes:
  return hashlib.sha256(relative_path.encode('utf-8')).digest()


@functools.lru_cache(maxsize=8)
def scan(root: str) -> Listing:
  """Lists and checks the image folder `root` (once per process and root).

  Raises:
    DatasetError: a missing folder, a layout other than the module
      docstring's, a file that is not an image, or an image whose first
      bytes are wrong; one line naming the path and the fix.
  """
  layout = (f'{root}/train/<class>/<image> (and, optionally, '
            f'{root}/test/<class>/<image>)')
  if not tf.io.gfile.isdir(root):
    raise DatasetError(
        f'image folder {root} does not exist or is not a folder: pass '
        f'--config.dataset.data_dir=<folder> with images in {layout}.')
  train_dir = os.path.join(root, 'train')
  if not tf.io.gfile.isdir(train_dir):
    raise DatasetError(f'{root} has no train/ folder: put the images in '
                       f'{layout}.')
  classes = _class_folders(train_dir)
  labels = {name: label for label, name in enumerate(classes)}
  train = sorted(_list_split(train_dir, classes, labels),
                 key=lambda image: _order_key(image[0]))
  test = None
  test_dirs = [os.path.join(root, name) for name in TEST_FOLDERS
               if tf.io.gfile.isdir(os.path.join(root, name))]
  if test_dirs:
    test_dir = test_dirs[0]
    test_classes = _class_folders(test_dir)
    unknown = [os.path.join(test_dir, c) for c in test_classes
               if c not in labels]
    if unknown:
      raise files_error(
          unknown, f'is a class that {train_dir} lacks',
          f'class folders of {test_dir} are classes that {train_dir} lacks',
          f'add {{it}} to {train_dir} with training images, or remove {{it}}')
    test = _list_split(test_dir, test_classes, labels)
  as_files = lambda images: Files(tuple(path for _, path, _ in images),
                                  tuple(label for _, _, label in images))
  return Listing(classes=tuple(classes), train=as_files(train),
                 test=None if test is None else as_files(test))
