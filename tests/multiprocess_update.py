"""A few BYOL updates on a fixed global batch, from one process of several.

Run by tests/test_multihost.py through launch/local_multiprocess.sh:

  python -m tests.multiprocess_update --out=DIR [--steps=3]
      [--coordinator_address=... --num_processes=N --process_id=I]

Every process builds the same global batch from a fixed seed, feeds its own
devices' rows of it (process i owns global devices i*D .. i*D + D - 1, D
local devices, the order of `jax.devices()`) and writes its final state to
DIR/process_<i>.npz. `train` also runs in the test's own process, as the
single-process reference.
"""

import argparse
import os

import jax
import numpy as np

from byol_jax import byol
from byol_jax import checkpoint
from byol_jax import multihost
from byol_jax import parallel
from byol_jax.data import device_feed
from tests import tiny

NUM_CLASSES = 10
STEPS = 3


def global_batches(num_devices: int, per_device: int, size: int,
                   steps: int) -> list[dict[str, np.ndarray]]:
  """`steps` random batches: view1/view2 uint8[N, B, S, S, 3], labels [N, B]."""
  rng = np.random.default_rng(0)
  shape = (num_devices, per_device, size, size, 3)
  return [dict(view1=rng.integers(0, 256, shape, np.uint8),
               view2=rng.integers(0, 256, shape, np.uint8),
               labels=rng.integers(0, NUM_CLASSES, shape[:2], np.int32))
          for _ in range(steps)]


def train(steps: int = STEPS) -> dict[str, np.ndarray]:
  """The state after `steps` updates, as {path key: array}, on every process."""
  config = tiny.pretrain_config()
  size = config.dataset.image_size
  per_device = parallel.check_batch_divisible(
      config.training.global_batch_size)
  schedules = byol.Schedules(
      global_batch_size=config.training.global_batch_size, warmup_steps=0,
      total_steps=steps)
  state = parallel.replicate(
      byol.init_state(config, NUM_CLASSES, (size, size, 3)))
  update = jax.pmap(byol.make_update_fn(config, NUM_CLASSES, schedules),
                    axis_name=byol.AXIS_NAME, donate_argnums=0)
  local = jax.local_device_count()
  first = jax.process_index() * local
  mine = [jax.tree.map(lambda x: x[first:first + local], batch)
          for batch in global_batches(jax.device_count(), per_device, size,
                                      steps)]
  for batch in device_feed.prefetch_to_devices(mine):
    state, _ = update(state, batch)
  return checkpoint.flatten(parallel.first_replica(state))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=STEPS)
  parser.add_argument('--coordinator_address')
  parser.add_argument('--num_processes', type=int)
  parser.add_argument('--process_id', type=int)
  args = parser.parse_args()
  multihost.initialize(args.coordinator_address, args.num_processes,
                       args.process_id)
  arrays = train(args.steps)
  os.makedirs(args.out, exist_ok=True)
  np.savez(os.path.join(args.out, f'process_{jax.process_index()}.npz'),
           **arrays)


if __name__ == '__main__':
  main()
