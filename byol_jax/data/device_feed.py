"""The one place where host batches become device arrays.

A host batch is a pytree of numpy arrays whose leading axis has one entry per
local device. Each leaf is split along that axis, one slice per device, which
is exactly the layout `jax.pmap` expects for an input mapped over axis 0: in
current JAX (pmap built on `jit` + `shard_map`) such an array is passed to the
computation without another copy.
"""

import collections
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax

from byol_jax import parallel


def prefetch_to_devices(
    iterator: Iterable[Any], size: int = 2,
    devices: Sequence[jax.Device] | None = None) -> Iterator[Any]:
  """Moves each host batch onto the devices, `size` batches ahead.

  Args:
    iterator: yields pytrees of numpy arrays, each leaf shaped [D, ...].
    size: batches whose transfer is started before they are needed; the
      transfers are asynchronous, so they overlap with device compute.
    devices: the D devices, in the order of the leading axis; defaults to
      `jax.local_devices()`, the order `jax.pmap` uses.

  Yields:
    The same pytrees with every leaf a `jax.Array` sharded over the devices.
  """
  if size < 1:
    raise ValueError(f'prefetch size must be at least 1, got {size}')
  sharding = parallel.device_sharding(devices)
  return _prefetch(iter(iterator), size, sharding)


def _prefetch(iterator: Iterator[Any], size: int,
              sharding: jax.sharding.Sharding) -> Iterator[Any]:
  queue = collections.deque()

  def enqueue(count):
    for batch in itertools.islice(iterator, count):
      queue.append(jax.device_put(batch, sharding))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
