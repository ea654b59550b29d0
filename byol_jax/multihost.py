"""Joining a multi-host run, and agreeing across its processes.

One process per host, each feeding its local devices (JAX's multi-controller
runtime). `initialize` starts `jax.distributed` when the run spans several
hosts: from explicit arguments, or from what SLURM or a Cloud TPU VM tells
JAX. Everything else here is a collective that every process must call at
the same point of the program.
"""

import glob
import importlib.util
import os
from collections.abc import Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np


def plan(coordinator_address: str | None, num_processes: int | None,
         process_id: int | None,
         environ: Mapping[str, str] = os.environ) -> dict[str, object] | None:
  """How to start `jax.distributed`: its keyword arguments, or None (1 host).

  Args:
    coordinator_address: 'host:port' of process 0, or None.
    num_processes: processes in the run, or None.
    process_id: this process's index in [0, num_processes), or None.
    environ: the environment to detect a cluster in.

  Returns:
    The three arguments when all are given; inside a SLURM step of several
    tasks or on a Cloud TPU VM, what JAX cannot detect itself ({} or the
    GPUs of a one-task-per-node step); None otherwise (a single host).

  Raises:
    ValueError: only some of the three arguments are given, or they
      contradict each other.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise ValueError('multi-host needs all of --coordinator_address, '
                       '--num_processes and --process_id (or none of them, '
                       'on SLURM or Cloud TPU)')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} is not in [0, '
                       f'--num_processes={num_processes})')
    return dict(coordinator_address=coordinator_address,
                num_processes=num_processes, process_id=process_id)
  if int(environ.get('SLURM_STEP_NUM_TASKS', environ.get('SLURM_NTASKS',
                                                          '1'))) > 1:
    # JAX would give each SLURM task only GPU number SLURM_LOCALID (one
    # task per GPU); with one task per node it must drive all of them.
    if (environ.get('SLURM_NTASKS_PER_NODE') == '1' and
        environ.get('SLURM_GPUS_ON_NODE')):
      return dict(local_device_ids=list(
          range(int(environ['SLURM_GPUS_ON_NODE']))))
    return {}
  if _on_cloud_tpu_vm(environ):
    # Harmless on a single-host TPU VM (one process); required on a pod.
    return {}
  return None


def _on_cloud_tpu_vm(environ: Mapping[str, str]) -> bool:
  """True on a Cloud TPU VM: GKE's worker list, or libtpu and TPU devices."""
  if environ.get('TPU_WORKER_HOSTNAMES'):
    return True
  # /dev/vfio also exists on GPU VMs with device pass-through: only count
  # it where the TPU runtime (installed by jax[tpu]) is present too.
  return importlib.util.find_spec('libtpu') is not None and bool(
      glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'))


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts `jax.distributed` if the run spans several hosts (see `plan`).

  Must run before anything touches a JAX backend.
  """
  kwargs = plan(coordinator_address, num_processes, process_id)
  if kwargs is not None:
    jax.distributed.initialize(**kwargs)


def check_same_step(steps: np.ndarray) -> int:
  """The restored step, given the one each process found (int[processes]).

  Raises:
    ValueError: the processes found different checkpoints.
  """
  if np.all(steps == steps[0]):
    return int(steps[0])
  found = ', '.join(f'process {i}: step {s}' for i, s in enumerate(steps))
  raise ValueError(
      f'processes found different latest checkpoints ({found}); the '
      '--workdir must be one folder that all hosts share (gs://..., NFS)')


def agree_on_step(local_step: int) -> int:
  """Every process's restored step, checked equal to process 0's.

  Collective: all processes call it, each with the step of the checkpoint
  it restored (0 for none).
  """
  if jax.process_count() == 1:
    return local_step
  steps = multihost_utils.process_allgather(np.int64(local_step))
  return check_same_step(np.asarray(steps).reshape(-1))


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (collective)."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.int32(flag))
  return bool(np.any(flags))


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier called `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
