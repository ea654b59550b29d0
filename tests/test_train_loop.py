"""End to end on a tiny Fashion-MNIST the test writes, 4 simulated devices.

Pretraining runs through the real entry point in a subprocess that is killed
with SIGKILL once it has written a checkpoint; the same command then resumes
at that step. Linear evaluation of the result counts every test image once
although the last batch is ragged.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from byol_jax import checkpoint
from byol_jax import train_loop
from tests import tiny
from tests.test_data_fashion_mnist import write_fashion_mnist

NUM_TRAIN = 64
NUM_TEST = 10  # not a multiple of the eval batch (8): the last one is ragged
TOTAL_STEPS = 12
CHECKPOINT_EVERY = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  source = str(tmp_path_factory.mktemp('source'))
  write_fashion_mnist(source, num_train=NUM_TRAIN, num_test=NUM_TEST)
  return dict(data_dir=str(tmp_path_factory.mktemp('tfds')),
              fashion_mnist_dir=source)


def _pretrain_command(dirs, workdir):
  return [
      sys.executable, '-m', 'experiments.pretrain', f'--workdir={workdir}',
      '--config=experiments/configs/byol.py:demo',
      f'--config.dataset.data_dir={dirs["data_dir"]}',
      f'--config.dataset.fashion_mnist_dir={dirs["fashion_mnist_dir"]}',
      '--config.dataset.image_size=16',
      '--config.model.encoder.width_multiplier=0.125',
      '--config.model.encoder.small_image_stem=True',  # as tests/tiny.py
      '--config.model.projector_hidden_size=32',
      '--config.model.predictor_hidden_size=32',
      '--config.model.projector_output_size=16',
      '--config.training.global_batch_size=16',
      f'--config.training.max_steps={TOTAL_STEPS}',
      f'--config.checkpointing.every_steps={CHECKPOINT_EVERY}',
      '--config.logging.log_every_steps=1',
  ]


def _wait_for_checkpoint(process, directory, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if checkpoint.all_steps(directory):
      return
    if process.poll() is not None:
      pytest.fail(f'pretraining exited ({process.returncode}) before its '
                  f'first checkpoint: {process.stdout.read()}')
    time.sleep(0.05)
  process.kill()
  pytest.fail('no checkpoint within the timeout')


@pytest.fixture(scope='module')
def pretrained(dirs, tmp_path_factory):
  """Workdir of a pretraining run killed after its first checkpoint, resumed."""
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  command = _pretrain_command(dirs, workdir)
  killed = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  _wait_for_checkpoint(killed, checkpoint_dir)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  killed_at = checkpoint.all_steps(checkpoint_dir)[-1]
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr
  return dict(workdir=workdir, killed_at=killed_at, stdout=resumed.stdout,
              command=command)


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_killed_run_resumes_at_its_checkpoint_and_finishes(pretrained):
  killed_at = pretrained['killed_at']
  assert 0 < killed_at < TOTAL_STEPS
  assert f'resuming at step {killed_at}' in pretrained['stdout']
  steps = [row['step'] for row in _rows(pretrained['workdir'])]
  # The resumed run logs every step after the checkpoint, once, in order.
  assert steps[-(TOTAL_STEPS - killed_at):] == list(
      range(killed_at + 1, TOTAL_STEPS + 1))
  with open(os.path.join(pretrained['workdir'], 'results.json')) as f:
    assert json.load(f)['step'] == TOTAL_STEPS
  for name in ('metrics.png', 'tensorboard'):
    assert os.path.exists(os.path.join(pretrained['workdir'], name))


def test_resumed_schedules_continue_where_they_stopped(pretrained):
  """lr and τ logged after the resume are those of an uninterrupted run."""
  by_step = {}
  for row in _rows(pretrained['workdir']):
    by_step[row['step']] = row  # the resumed run's row wins
  steps = sorted(by_step)
  assert steps == list(range(1, TOTAL_STEPS + 1))
  taus = [by_step[s]['tau'] for s in steps]
  assert all(a <= b for a, b in zip(taus, taus[1:]))  # τ never goes back
  lrs = [by_step[s]['learning_rate'] for s in steps]
  # Warm-up of 0.1 epoch is 0 steps here: a pure cosine, strictly falling.
  assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_finished_run_is_reported_without_recomputation(pretrained):
  again = subprocess.run(pretrained['command'], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr
  assert f'already complete at step {TOTAL_STEPS}' in again.stdout


def _linear_eval_config(dirs, **overrides):
  config = tiny.linear_eval_config()
  config.dataset.update(data_dir=dirs['data_dir'],
                        fashion_mnist_dir=dirs['fashion_mnist_dir'])
  config.training.max_steps = 4
  config.eval.global_batch_size = 8
  config.logging.log_every_steps = 2
  config.update(overrides)
  return config


def test_linear_eval_counts_every_test_image_once(dirs, pretrained, tmp_path):
  config = _linear_eval_config(dirs, checkpoint=pretrained['workdir'])
  results = train_loop.linear_evaluation(config, str(tmp_path))
  assert results['num_examples'] == NUM_TEST
  # Counts of correct answers, not averages of padded batches.
  for name in ('top1', 'top5'):
    correct = results[name] * NUM_TEST
    assert abs(correct - round(correct)) < 1e-9
    assert 0 <= results[name] <= 1
  assert results['top5'] >= results['top1']
  with open(tmp_path / 'results.json') as f:
    assert json.load(f)['num_examples'] == NUM_TEST


def test_random_encoder_baseline_is_a_config_switch(dirs, tmp_path):
  config = _linear_eval_config(dirs, encoder_init='random', checkpoint='')
  results = train_loop.linear_evaluation(config, str(tmp_path))
  assert results['encoder'] == 'random'
  assert results['num_examples'] == NUM_TEST


def test_linear_eval_of_missing_checkpoint_is_a_clear_error(dirs, tmp_path):
  config = _linear_eval_config(dirs, checkpoint=str(tmp_path / 'nothing'))
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint at'):
    train_loop.linear_evaluation(config, str(tmp_path / 'eval'))
  assert not os.path.exists(tmp_path / 'eval')


def test_linear_eval_of_other_architecture_names_the_parameter(
    dirs, pretrained, tmp_path):
  config = _linear_eval_config(dirs, checkpoint=pretrained['workdir'])
  config.model.encoder.width_multiplier = 0.25
  with pytest.raises(checkpoint.CheckpointError, match='has shape'):
    train_loop.linear_evaluation(config, str(tmp_path))


def test_finetuning_trains_the_encoder(dirs, pretrained, tmp_path):
  config = _linear_eval_config(dirs, checkpoint=pretrained['workdir'],
                               finetune=True)
  config.training.max_steps = 2
  train_loop.linear_evaluation(config, str(tmp_path))
  path = checkpoint.latest_path(str(tmp_path / 'checkpoints'))
  arrays, _ = checkpoint.load_arrays(path)
  pretrained_arrays, _ = checkpoint.load_arrays(checkpoint.latest_path(
      os.path.join(pretrained['workdir'], 'checkpoints')))
  key = next(k for k in arrays if k.startswith('params/') and
             'initial_conv' in k)
  assert not np.array_equal(
      arrays[key],
      pretrained_arrays['online_params/' + key[len('params/'):]])
