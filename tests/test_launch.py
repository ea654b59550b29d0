"""The launchers' --dry-run output (workers, pass-through, quoting) and --help.

Each printed line must be a command that a shell runs as intended: parsing
it with POSIX shell rules (shlex) has to give back every argument the user
gave, spaces and quotes included.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a user passes through: a preset, an override with spaces and quotes.
ARGS = ['--workdir=gs://bucket/runs/byol 1000ep',
        '--config=experiments/configs/byol.py:1000ep',
        "--config.dataset.data_dir=/data/my datasets/it's here",
        '--config.training.max_steps=10']


def _dry_run(script, *options, args=ARGS):
  result = subprocess.run(['bash', os.path.join(REPO, 'launch', script),
                           '--dry-run', *options, '--', *args],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  return [line for line in result.stdout.splitlines() if line]


def _ends_with_args(argv, args=ARGS):
  index = argv.index(args[0])
  return argv[index:index + len(args)] == args


def test_local_multiprocess_runs_one_command_per_process():
  lines = _dry_run('local_multiprocess.sh', '--processes', '3', '--devices',
                   '2', '--port', '12345')
  assert len(lines) == 3
  for process_id, line in enumerate(lines):
    argv = shlex.split(line)
    flags = next(a for a in argv if a.startswith('XLA_FLAGS='))
    assert '--xla_force_host_platform_device_count=2' in flags[len(
        'XLA_FLAGS='):].split()
    assert argv[argv.index('-m') + 1] == 'experiments.pretrain'
    assert _ends_with_args(argv)
    assert '--coordinator_address=localhost:12345' in argv
    assert '--num_processes=3' in argv
    assert f'--process_id={process_id}' in argv


def test_tpu_pod_runs_the_command_on_all_workers():
  lines = _dry_run('tpu_pod.sh', '--name', 'byol', '--zone', 'us-central2-b',
                   '--accelerator-type', 'v4-256', '--spot', '--delete')
  assert lines[0] == '# v4-256: 32 worker(s), one JAX process each'
  commands = [shlex.split(line) for line in lines[1:]]
  create, delete = commands[0], commands[-1]
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert '--accelerator-type=v4-256' in create and '--spot' in create
  assert delete[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete',
                        'byol']
  ssh = [c for c in commands if c[4:5] == ['ssh']]
  assert len(ssh) == 2  # install, then run
  assert all('--worker=all' in c for c in ssh)
  remote = next(a for a in ssh[1] if a.startswith('--command='))
  # The workers' shell parses the remote command a second time.
  remote_argv = shlex.split(remote[len('--command='):])
  assert remote_argv[remote_argv.index('python3'):][:3] == [
      'python3', '-m', 'experiments.pretrain']
  assert _ends_with_args(remote_argv)
  assert 'pip' in ' '.join(ssh[0])


@pytest.mark.parametrize('accelerator, workers', [
    ('v4-8', 1), ('v3-32', 4), ('v5p-128', 16), ('v5litepod-256', 64),
    ('v6e-8', 1), ('v6e-16', 4)])
def test_tpu_pod_counts_the_workers_of_a_slice(accelerator, workers):
  lines = _dry_run('tpu_pod.sh', '--name', 'n', '--zone', 'z',
                   '--accelerator-type', accelerator, '--no-create')
  assert lines[0] == f'# {accelerator}: {workers} worker(s), one JAX process each'
  assert not any(' create ' in line for line in lines)


def test_slurm_submits_one_task_per_node_and_passes_the_arguments():
  lines = _dry_run('slurm_gpu.sh', '--nodes', '4', '--gpus-per-node', '8',
                   '--partition', 'gpu', '--time', '24:00:00')
  sbatch, srun = (shlex.split(line) for line in lines)
  assert sbatch[0] == 'sbatch'
  assert {'--nodes=4', '--ntasks-per-node=1', '--gpus-per-node=8',
          '--partition=gpu', '--time=24:00:00'} <= set(sbatch)
  assert sbatch[sbatch.index(ARGS[0]) - 1].endswith('launch/slurm_gpu.sbatch')
  assert _ends_with_args(sbatch)
  assert srun[:3] == ['srun', '--nodes=4', '--ntasks-per-node=1']
  assert srun[srun.index('-m') + 1] == 'experiments.pretrain'
  assert _ends_with_args(srun)


@pytest.mark.parametrize('time_limit', ['90', '30:00', '24:00:00', '2-12',
                                        '2-12:30', '2-12:30:15'])
def test_slurm_passes_each_of_slurms_time_formats(time_limit):
  sbatch = shlex.split(_dry_run('slurm_gpu.sh', '--nodes', '2', '--time',
                                time_limit)[0])
  assert f'--time={time_limit}' in sbatch


def _slurm_error(*options):
  """slurm_gpu.sh's exit status and stderr for `options`; nothing printed."""
  result = subprocess.run(['bash', os.path.join(REPO, 'launch', 'slurm_gpu.sh'),
                           '--dry-run', '--nodes', '2', *options, '--', *ARGS],
                          capture_output=True, text=True, timeout=60)
  assert not result.stdout
  return result.returncode, result.stderr


@pytest.mark.parametrize('time_limit', ['24h', '1:00:00:00', '2-', '1-2:3:4:5',
                                        '1.5', ' 90'])
def test_slurm_refuses_a_time_slurm_cannot_read(time_limit):
  assert _slurm_error('--time', time_limit) == (2, (
      'error: --time must be minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or '
      f"D-HH:MM:SS, e.g. 24:00:00, got '{time_limit}'\n"))


@pytest.mark.parametrize('module', ['experiments.linear_eval ',
                                    'experiments. pretrain', 'a\tb'])
def test_slurm_refuses_a_module_with_whitespace(module):
  assert _slurm_error('--module', module) == (2, (
      'error: --module must be a module name without spaces, e.g. '
      f"experiments.linear_eval, got '{module}'\n"))


@pytest.mark.parametrize('option', ['--time', '--module', '--partition'])
def test_slurm_refuses_an_empty_value(option):
  assert _slurm_error(option, '') == (
      2, f'error: {option} needs a value, e.g. {option} VALUE (see --help)\n')


def test_sbatch_script_asks_for_one_task_per_node_and_a_warning_signal():
  with open(os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')) as f:
    directives = re.findall(r'^#SBATCH (\S+)', f.read(), re.MULTILINE)
  assert '--ntasks-per-node=1' in directives
  assert '--requeue' in directives
  assert any(d.startswith('--signal=TERM@') for d in directives)


@pytest.mark.parametrize('script, options', [
    ('local_multiprocess.sh', ('--processes', 'two')),
    ('tpu_pod.sh', ('--zone', 'z', '--accelerator-type', 'v4-8')),
    ('slurm_gpu.sh', ('--nodes', '0')),
    ('setup_env.sh', ()),  # it takes no --dry-run
])
def test_bad_launcher_options_fail_with_one_line(script, options):
  result = subprocess.run(['bash', os.path.join(REPO, 'launch', script),
                           '--dry-run', *options, '--', *ARGS],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.startswith('error: ')
  assert len(result.stderr.strip().splitlines()) == 1
  assert not result.stdout


@pytest.mark.parametrize('script, options, message', [
    ('local_multiprocess.sh', ('--port', '99999'),
     "--port must be a TCP port, 1 to 65535, got '99999'"),
    ('slurm_gpu.sh', (),
     '--nodes is required (nodes = JAX processes), e.g. --nodes 4'),
])
def test_out_of_range_or_missing_option_is_named(script, options, message):
  result = subprocess.run(['bash', os.path.join(REPO, 'launch', script),
                           '--dry-run', *options, '--', *ARGS],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr == f'error: {message}\n'
  assert not result.stdout


@pytest.mark.parametrize('script, options', [
    ('local_multiprocess.sh', ()),
    ('tpu_pod.sh', ('--name', 'n', '--zone', 'z', '--accelerator-type',
                    'v4-8')),
])
@pytest.mark.parametrize('separator', [(), ('--',)])
def test_launcher_without_entry_point_flags_fails_with_one_line(
    script, options, separator):
  result = subprocess.run(['bash', os.path.join(REPO, 'launch', script),
                           '--dry-run', *options, *separator],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr == ('error: no entry-point flags after --; give at '
                           'least --workdir and --config\n')
  assert not result.stdout


@pytest.mark.parametrize('script, option', [
    ('local_multiprocess.sh', '--processes'), ('tpu_pod.sh', '--name'),
    ('slurm_gpu.sh', '--nodes'), ('slurm_gpu.sh', '--partition'),
])
@pytest.mark.parametrize('followed_by', [(), ('--dry-run', '--', *ARGS)])
def test_option_without_its_value_fails_with_one_line(script, option,
                                                      followed_by):
  # An option followed by another option has no value either.
  result = subprocess.run(['bash', os.path.join(REPO, 'launch', script),
                           '--dry-run', option, *followed_by],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr == f'error: {option} needs a value, e.g. {option} ' \
                          'VALUE (see --help)\n'


def _parsed_options(script):
  """The options a launcher's `case` statement accepts, e.g. '--nodes'."""
  with open(os.path.join(REPO, 'launch', script)) as f:
    patterns = re.findall(r'^\s+((?:-[-\w]+\|?)+)\)', f.read(), re.MULTILINE)
  return [option for pattern in patterns for option in pattern.split('|')]


@pytest.mark.parametrize('script, options', [
    ('local_multiprocess.sh', ('--processes', '2')),
    ('tpu_pod.sh', ('--name', 'n', '--zone', 'z', '--accelerator-type',
                    'v4-8')),
    ('slurm_gpu.sh', ('--nodes', '4')),
    ('demo.sh', ()),
    ('setup_env.sh', ()),
])
@pytest.mark.parametrize('help_flag', ['--help', '-h'])
def test_help_prints_usage_and_does_nothing_else(tmp_path, script, options,
                                                 help_flag):
  # The script runs from a copy, so that demo.sh's set-up is a stub and
  # setup_env.sh's venv would land in the copy; every command a launcher
  # could run is a stub too. Each stub leaves a file if called.
  launch = tmp_path / 'checkout' / 'launch'
  launch.mkdir(parents=True)
  shutil.copy(os.path.join(REPO, 'launch', script), launch)
  stubs = tmp_path / 'bin'
  stubs.mkdir()
  pythons = [f'python3.{minor}' for minor in range(11, 16)]
  for name in ('setup_env.sh', 'gcloud', 'sbatch', 'srun', 'python3', 'tar',
               'apt-get', 'sudo', *pythons):
    if name == script:
      continue
    stub = (launch if name == 'setup_env.sh' else stubs) / name
    stub.write_text(f'#!/bin/sh\ntouch "{tmp_path}/called_{name}"\n')
    stub.chmod(0o755)
  work = tmp_path / 'work'
  work.mkdir()
  result = subprocess.run(
      ['bash', str(launch / script), *options, help_flag, '--', *ARGS],
      capture_output=True, text=True, timeout=60, cwd=work,
      env=dict(os.environ, PATH=f'{stubs}:{os.environ["PATH"]}'))
  assert result.returncode == 0, result.stderr
  assert not result.stderr
  assert 'Usage:' in result.stdout and 'Example:' in result.stdout
  assert f'launch/{script}' in result.stdout
  parsed = _parsed_options(script)
  assert '--help' in parsed and '-h' in parsed
  for option in parsed:
    assert option in result.stdout, option
  assert sorted(os.listdir(tmp_path)) == ['bin', 'checkout', 'work']
  assert os.listdir(tmp_path / 'checkout') == ['launch']
  assert not os.listdir(work)


def test_sourced_setup_env_ignores_its_callers_arguments(tmp_path):
  # A sourced file sees the caller's arguments: tests/run.sh's go to pytest.
  checkout = tmp_path / 'checkout'
  (checkout / 'launch').mkdir(parents=True)
  shutil.copy(os.path.join(REPO, 'launch', 'setup_env.sh'), checkout / 'launch')
  (checkout / 'setup.py').write_text('# stand-in\n')
  venv = tmp_path / 'venv'  # already set up: only checked
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').write_text('#!/bin/sh\n')
  (venv / 'bin' / 'python').chmod(0o755)
  (venv / '.byol_jax_setup').write_text(
      hashlib.sha1(b'# stand-in\n').hexdigest() + '\n')
  stubs = tmp_path / 'bin'  # in case Fashion-MNIST is not installed here
  stubs.mkdir()
  for name in ('apt-get', 'sudo'):
    (stubs / name).write_text('#!/bin/sh\n')
    (stubs / name).chmod(0o755)
  result = subprocess.run(
      ['bash', '-c', 'set -euo pipefail; source launch/setup_env.sh; '
       'echo "$PY"', 'caller', '--help', '-k', 'unknown'],
      capture_output=True, text=True, timeout=60, cwd=checkout,
      env=dict(os.environ, BYOL_VENV=str(venv),
               PATH=f'{stubs}:{os.environ["PATH"]}'))
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'{venv}/bin/python\n'
