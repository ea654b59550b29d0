"""Placement of pmapped values: the mapped axis, replication, reading back.

`jax.pmap(..., axis_name='i')` maps axis 0 of its inputs over the local
devices. Inputs placed with `device_sharding()` (a one-axis mesh named 'i'
over the local devices) match the layout of pmap's own outputs on current
JAX, so a state that goes around the loop is never re-laid-out and the step
is compiled once.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

AXIS_NAME = 'i'


def device_sharding(
    devices: Sequence[jax.Device] | None = None) -> jax.sharding.NamedSharding:
  """Sharding that puts entry d of an array's leading axis on devices[d].

  Args:
    devices: defaults to `jax.local_devices()`, the order `jax.pmap` uses.
  """
  devices = jax.local_devices() if devices is None else devices
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS_NAME,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS_NAME))


def check_batch_divisible(global_batch_size: int,
                          num_devices: int | None = None, *,
                          flag: str = 'training.global_batch_size') -> int:
  """Returns the per-device batch, or raises a one-line ValueError.

  The one check of a batch's size: the training loops and the host
  pipelines (which pass `num_devices`) all call it.

  Args:
    global_batch_size: images per step summed over all devices of all hosts.
    num_devices: devices of all processes together; defaults to
      `jax.device_count()`.
    flag: the config field that sets the batch, named in the message.
  """
  devices = jax.device_count() if num_devices is None else num_devices
  if global_batch_size <= 0:
    raise ValueError(
        f'global batch size {global_batch_size} must be positive; set '
        f'--config.{flag} to a multiple of {devices}')
  per_device, remainder = divmod(global_batch_size, devices)
  if remainder:
    raise ValueError(
        f'global batch size {global_batch_size} does not divide across '
        f'{devices} devices; set --config.{flag} to a multiple of {devices}')
  return per_device


def replicate(tree: Any) -> Any:
  """Copies a host pytree onto every local device: leaves get [D, ...]."""
  count = jax.local_device_count()
  stacked = jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x), (count, *np.shape(x))), tree)
  return jax.device_put(stacked, device_sharding())


def first_replica(tree: Any) -> Any:
  """Host numpy copy of the first local device's replica of each leaf."""
  def fetch(x):
    shard = np.asarray(x.addressable_shards[0].data)
    # pmap shards keep their leading axis (size 1) on current JAX, and drop
    # it on older releases.
    return shard[0] if shard.ndim == x.ndim else shard
  return jax.tree.map(fetch, tree)
