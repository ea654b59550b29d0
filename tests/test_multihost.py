"""Multi-host: joining a run, agreeing on the step, 2 processes = 1 process.

Two tests start 2 processes × 2 simulated CPU devices with
launch/local_multiprocess.sh (jax.distributed over localhost, CPU
collectives): one compares their parameters with each other and with one
process of 4 devices (this one) on the same global batches; one runs the
real pretraining entry point, stops it with SIGTERM and resumes it.
"""

import importlib.util
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from byol_jax import checkpoint
from byol_jax import metric_writer
from byol_jax import multihost
from byol_jax import preemption
from tests import multiprocess_update
from tests.test_data_fashion_mnist import write_fashion_mnist
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_explicit_flags_are_passed_to_jax_distributed():
  assert multihost.plan('10.0.0.1:1234', 4, 3, environ={}) == dict(
      coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3)


@pytest.mark.parametrize('args', [('h:1', None, None), (None, 2, 0),
                                  ('h:1', 2, 2)])
def test_incomplete_or_contradictory_flags_are_an_error(args):
  with pytest.raises(ValueError, match='process'):
    multihost.plan(*args, environ={})


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is not None,
                    reason='a TPU VM always joins jax.distributed')
def test_single_host_needs_no_distributed_runtime():
  assert multihost.plan(None, None, None, environ={'SLURM_NTASKS': '1'}) is None


def test_tpu_vm_of_gke_is_detected():
  assert multihost.plan(None, None, None,
                        environ={'TPU_WORKER_HOSTNAMES': 'a,b'}) == {}


def test_slurm_with_one_task_per_node_drives_every_gpu_of_the_node():
  environ = dict(SLURM_NTASKS='4', SLURM_NTASKS_PER_NODE='1',
                 SLURM_GPUS_ON_NODE='8')
  assert multihost.plan(None, None, None, environ=environ) == dict(
      local_device_ids=list(range(8)))
  # One task per GPU: JAX's own SLURM detection is right.
  environ.update(SLURM_NTASKS_PER_NODE='8')
  assert multihost.plan(None, None, None, environ=environ) == {}


def test_processes_must_restore_the_same_step():
  assert multihost.check_same_step(np.array([40, 40, 40])) == 40
  with pytest.raises(ValueError, match='process 1: step 0.*all hosts share'):
    multihost.check_same_step(np.array([40, 0]))


def _child_env():
  """This environment without our 4 devices: the launcher sets its own."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env['PY'] = sys.executable
  return env


def _launch(module, out, processes, devices, *args):
  """Runs `module` on `processes` × `devices` CPU devices via the launcher."""
  logs = out / 'logs'
  result = subprocess.run(
      ['bash', 'launch/local_multiprocess.sh', '--processes', str(processes),
       '--devices', str(devices), '--module', module, '--logdir', str(logs),
       '--', *args],
      cwd=REPO, env=_child_env(), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, _read_logs(logs)


def _load(path):
  with np.load(path) as f:
    return dict(f)


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
  two, one = tmp_path / 'two', tmp_path / 'one'
  _launch('tests.multiprocess_update', two, 2, 2, f'--out={two}')
  process_0, process_1 = (_load(two / f'process_{i}.npz') for i in (0, 1))
  assert process_0.keys() == process_1.keys()
  for key in process_0:
    np.testing.assert_array_equal(process_0[key], process_1[key], err_msg=key)

  # The reference goes through jax.distributed too (1 process × 4 devices),
  # so that both all-reduce with gloo: XLA's in-process all-reduce rounds
  # differently (5e-6 after one step), and three steps of this tiny network
  # on noise images amplify that to 2e-2. Gloo against gloo still rounds
  # differently per topology: 3e-6 after three steps from one initialisation,
  # 1.3e-4 on one element from another. So each array may differ by 1 % of
  # how far the three steps moved it (median move: 3e-2).
  _launch('tests.multiprocess_update', one, 1, 4, f'--out={one}')
  single = _load(one / 'process_0.npz')
  assert single['step'] == multiprocess_update.STEPS
  assert single.keys() == process_0.keys()
  initial = multiprocess_update.train(steps=0)
  as_float = lambda x: np.asarray(x, np.float64)
  for key in single:
    moved = np.max(np.abs(as_float(single[key]) - as_float(initial[key])),
                   initial=0.0)
    error = np.max(np.abs(as_float(process_0[key]) - as_float(single[key])),
                   initial=0.0)
    assert error <= 1e-5 + 1e-2 * moved, (key, error, moved)
  # The updates did something: the parameters left their initial values.
  assert any(not np.array_equal(single[k], initial[k]) for k in single
             if k.startswith('online_params/'))


def test_multihost_pretraining_writes_once_stops_together_and_resumes(
    tmp_path):
  """2 processes × 2 devices through the real entry point, SIGTERM, resume."""
  source = tmp_path / 'source'
  write_fashion_mnist(str(source), num_train=64, num_test=10)
  workdir = tmp_path / 'run'
  logs = tmp_path / 'logs'
  total_steps = 12
  args = tiny.pretrain_flags(
      data_dir=str(tmp_path / 'tfds'), fashion_mnist_dir=str(source),
      workdir=str(workdir), total_steps=total_steps) + [
          '--config.checkpointing.every_secs=1e6',
          '--config.checkpointing.stop_check_every_steps=1']
  command = ['bash', 'launch/local_multiprocess.sh', '--processes', '2',
             '--devices', '2', '--logdir', str(logs), '--', *args]
  env = _child_env()
  launcher = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
  for line in launcher.stdout:  # process 0's log, line by line
    if line.startswith('step 2/'):
      launcher.send_signal(signal.SIGTERM)  # passed on to both processes
      break
  launcher.stdout.read()
  launcher.stdout.close()
  assert launcher.wait(timeout=300) == preemption.EXIT_CODE, _read_logs(logs)
  stopped_at = checkpoint.all_steps(str(workdir / 'checkpoints'))
  # On a loaded machine the SIGTERM can land a few steps after 'step 2/'
  # reached this test (once: after step 6 of 6); it must still stop early.
  assert len(stopped_at) == 1 and 2 <= stopped_at[0] < total_steps, stopped_at
  for i in (0, 1):
    assert 'preempted: stopped on SIGTERM' in (
        logs / f'process_{i}.log').read_text()
  assert 'step 1/' not in (logs / 'process_1.log').read_text()

  resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, _read_logs(logs)
  assert f'resuming at step {stopped_at[0]}' in resumed.stdout
  # Only process 0 logs: each step once (the SIGTERM checkpoint is the step
  # the first run stopped after, so nothing is repeated).
  steps = [row['step'] for row in metric_writer.read_jsonl(
      str(workdir / 'metrics.jsonl'))]
  assert steps == list(range(1, total_steps + 1))
  assert checkpoint.all_steps(str(workdir / 'checkpoints'))[-1] == total_steps


def _read_logs(folder):
  return '\n'.join(f'--- {p.name}\n{p.read_text()}'
                   for p in sorted(folder.glob('*.log')))
