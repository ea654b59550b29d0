"""Host batches land on the devices as pmap inputs, one slice per device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import parallel
from byol_jax.data import device_feed


def _host_batches(count, num_devices):
  for step in range(count):
    yield {
        'images': np.arange(num_devices * 2 * 3, dtype=np.uint8).reshape(
            num_devices, 2, 3) + step,
        'labels': np.full((num_devices, 2), step, np.int32),
    }


def test_each_device_holds_its_slice_and_pmap_sees_it():
  devices = jax.local_devices()
  assert len(devices) == 4  # tests/conftest.py simulates 4 CPU devices
  batches = list(device_feed.prefetch_to_devices(_host_batches(3, 4)))
  assert len(batches) == 3
  per_device_sum = jax.pmap(lambda b: jnp.sum(b['images'], dtype=jnp.int32)
                            + b['labels'].sum(), axis_name='i')
  for step, (batch, host) in enumerate(zip(batches,
                                           _host_batches(3, 4))):
    for key, leaf in batch.items():
      assert isinstance(leaf, jax.Array)
      for shard in leaf.addressable_shards:
        index = devices.index(shard.device)
        np.testing.assert_array_equal(np.asarray(shard.data),
                                      host[key][index:index + 1])
    want = (host['images'].reshape(4, -1).sum(axis=1)
            + host['labels'].sum(axis=1))
    np.testing.assert_array_equal(np.asarray(per_device_sum(batch)), want)
    np.testing.assert_array_equal(
        np.asarray(jax.pmap(lambda b: b)(batch)['labels']), host['labels'])
    assert (host['labels'] == step).all()


def test_layout_is_the_one_pmap_uses_so_pmap_does_not_copy():
  # pmap (jit + shard_map) maps axis 0 over a one-axis mesh of the local
  # devices; an input already laid out that way is passed on as it is.
  pmap_layout = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(jax.local_devices()), ('i',)),
      jax.sharding.PartitionSpec('i'))
  ours = parallel.device_sharding(jax.local_devices())
  for ndim in (1, 2, 5):
    assert ours.is_equivalent_to(pmap_layout, ndim)


def test_keeps_size_batches_in_flight():
  pulled = []

  def counting():
    for batch in _host_batches(5, 4):
      pulled.append(batch)
      yield batch

  feed = device_feed.prefetch_to_devices(counting(), size=3)
  assert not pulled  # nothing is read before the first batch is asked for
  first = next(feed)
  assert len(pulled) == 3
  np.testing.assert_array_equal(np.asarray(first['labels']), 0)
  rest = list(feed)
  assert [int(np.asarray(b['labels'])[0, 0]) for b in rest] == [1, 2, 3, 4]


def test_explicit_device_subset_and_bad_size():
  devices = jax.local_devices()[:2]
  (batch,) = device_feed.prefetch_to_devices(_host_batches(1, 2),
                                             devices=devices)
  assert batch['images'].sharding.device_set == set(devices)
  with pytest.raises(ValueError, match='at least 1'):
    device_feed.prefetch_to_devices(_host_batches(1, 4), size=0)
