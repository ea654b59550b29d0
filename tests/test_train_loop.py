"""End to end on a tiny Fashion-MNIST the test writes, 4 simulated devices.

Pretraining runs through the real entry point in subprocesses: one runs
uninterrupted, one is killed with SIGKILL and one sent SIGTERM, each at a
random step; the same command then resumes them, and both must end with
bitwise the parameters, statistics and optimizer state of the first. Linear evaluation of the result counts every test image once
although the last batch is ragged.
"""

import functools
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

from byol_jax import byol
from byol_jax import checkpoint
from byol_jax import linear_eval
from byol_jax import parallel
from byol_jax import preemption
from byol_jax import progress
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
  flags = tiny.pretrain_flags(
      data_dir=dirs['data_dir'], fashion_mnist_dir=dirs['fashion_mnist_dir'],
      workdir=workdir, total_steps=TOTAL_STEPS,
      checkpoint_every=CHECKPOINT_EVERY)
  return [sys.executable, '-m', 'experiments.pretrain', *flags]


def _start(command):
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_step(process, step):
  """Reads progress lines until `step` has been logged (one line per step)."""
  for line in process.stdout:
    if line.startswith(f'step {step}/'):
      return
  process.wait()
  pytest.fail(f'pretraining exited ({process.returncode}) before step {step}')


def _final_arrays(workdir):
  arrays, metadata = checkpoint.load_arrays(
      checkpoint.latest_path(os.path.join(workdir, 'checkpoints')))
  assert metadata['step'] == TOTAL_STEPS
  return arrays


def _resume(command):
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr
  return resumed.stdout


@pytest.fixture(scope='module')
def uninterrupted(dirs, tmp_path_factory):
  """Final arrays of a run of the same command that nobody interrupts."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  _resume(_pretrain_command(dirs, workdir))
  return _final_arrays(workdir)


@pytest.fixture(scope='module')
def kill_steps():
  """Random steps to interrupt at (after the first checkpoint, before the end)."""
  rng = random.Random(int.from_bytes(os.urandom(4), 'little'))
  return dict(sigkill=rng.randint(CHECKPOINT_EVERY + 1, TOTAL_STEPS - 2),
              sigterm=rng.randint(1, TOTAL_STEPS - 2))


def _interrupted_run(dirs, workdir, step, signal_number):
  """Starts pretraining, sends `signal_number` once `step` is logged, resumes.

  Returns the interrupted process's exit status and remaining output, the
  newest checkpoint it left, and the resumed run's stdout.
  """
  command = _pretrain_command(dirs, workdir)
  process = _start(command)
  _wait_for_step(process, step)
  process.send_signal(signal_number)
  output = process.stdout.read()
  process.wait()
  process.stdout.close()
  last_checkpoint = checkpoint.all_steps(
      os.path.join(workdir, 'checkpoints'))[-1]
  return dict(workdir=workdir, command=command,
              returncode=process.returncode, output=output,
              last_checkpoint=last_checkpoint, resume_stdout=_resume(command))


@pytest.fixture(scope='module')
def pretrained(dirs, tmp_path_factory, kill_steps):
  """Workdir of a pretraining run killed (SIGKILL) at a random step, resumed."""
  run = _interrupted_run(dirs, str(tmp_path_factory.mktemp('pretrain')),
                         kill_steps['sigkill'], signal.SIGKILL)
  return dict(workdir=run['workdir'], killed_at=run['last_checkpoint'],
              stdout=run['resume_stdout'], command=run['command'])


@pytest.fixture(scope='module')
def terminated(dirs, tmp_path_factory, kill_steps):
  """A run sent SIGTERM at a random step: its exit, stderr and the resume."""
  run = _interrupted_run(dirs, str(tmp_path_factory.mktemp('terminated')),
                         kill_steps['sigterm'], signal.SIGTERM)
  return dict(workdir=run['workdir'], returncode=run['returncode'],
              output=run['output'], stopped_at=run['last_checkpoint'],
              resume_stdout=run['resume_stdout'])


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_killed_run_resumes_at_its_checkpoint_and_finishes(pretrained,
                                                           kill_steps):
  killed_at = pretrained['killed_at']
  # The checkpoint of the step it was killed at may still have been in
  # the writer thread.
  assert kill_steps['sigkill'] - CHECKPOINT_EVERY <= killed_at <= kill_steps[
      'sigkill']
  assert f'resuming at step {killed_at}' in pretrained['stdout']
  steps = [row['step'] for row in _rows(pretrained['workdir'])]
  # The resumed run logs every step after the checkpoint, once, in order.
  assert steps[-(TOTAL_STEPS - killed_at):] == list(
      range(killed_at + 1, TOTAL_STEPS + 1))
  with open(os.path.join(pretrained['workdir'], 'results.json')) as f:
    assert json.load(f)['step'] == TOTAL_STEPS
  for name in ('metrics.png', 'tensorboard'):
    assert os.path.exists(os.path.join(pretrained['workdir'], name))


def test_killed_and_resumed_run_ends_bitwise_equal(pretrained, uninterrupted,
                                                    kill_steps):
  resumed = _final_arrays(pretrained['workdir'])
  assert resumed.keys() == uninterrupted.keys()
  differ = [k for k in resumed if not np.array_equal(resumed[k],
                                                     uninterrupted[k])]
  assert not differ, (f'SIGKILL at step {kill_steps["sigkill"]}: {differ}')


def test_sigterm_saves_the_step_in_progress_and_exits_75(terminated,
                                                         kill_steps):
  assert terminated['returncode'] == preemption.EXIT_CODE, terminated['output']
  # It finishes the step that was running when the signal came, at most.
  assert kill_steps['sigterm'] <= terminated['stopped_at'] <= kill_steps[
      'sigterm'] + 1
  assert (f'stopped on SIGTERM after step {terminated["stopped_at"]}' in
          terminated['output'])
  assert (f'resuming at step {terminated["stopped_at"]}' in
          terminated['resume_stdout'])


def test_terminated_and_resumed_run_ends_bitwise_equal(terminated,
                                                       uninterrupted,
                                                       kill_steps):
  resumed = _final_arrays(terminated['workdir'])
  differ = [k for k in resumed if not np.array_equal(resumed[k],
                                                     uninterrupted[k])]
  assert not differ, (f'SIGTERM at step {kill_steps["sigterm"]}: {differ}')


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


def test_precomputed_protocol_picks_l2_on_valid_and_tests_every_image(
    dirs, pretrained, tmp_path, capsys):
  config = _linear_eval_config(dirs, checkpoint=pretrained['workdir'],
                               protocol='precomputed')
  config.probe.update(l2_max=1.0, l2_min=1e-4, num_l2=3, lbfgs_iterations=10)
  results = train_loop.linear_evaluation(config, str(tmp_path))
  assert results['num_examples'] == NUM_TEST
  assert results['l2'] in (1.0, 1e-2, 1e-4)
  assert results['protocol'] == 'precomputed'
  rows = _rows(str(tmp_path))
  assert [row['step'] for row in rows] == [1, 2, 3]
  assert max(row['valid_top1'] for row in rows) == results['valid_top1']
  assert os.path.exists(tmp_path / 'metrics.png')
  # Killed after the classifier's checkpoint: a restart only tests it, and
  # reports the fit's figures (l2, valid_top1, train_*) from the checkpoint.
  os.remove(tmp_path / 'results.json')
  capsys.readouterr()
  again = train_loop.linear_evaluation(config, str(tmp_path))
  assert 'embedding' not in capsys.readouterr().out
  assert again == results
  with open(tmp_path / 'results.json') as f:
    assert json.load(f) == results
  # Killed before it: the saved features are reused, not recomputed.
  os.remove(tmp_path / 'results.json')
  shutil.rmtree(tmp_path / 'checkpoints')
  third = train_loop.linear_evaluation(config, str(tmp_path))
  assert 'embedding' not in capsys.readouterr().out
  assert third['top1'] == results['top1']
  # Features embedded at another image size are not reused.
  os.remove(tmp_path / 'results.json')
  shutil.rmtree(tmp_path / 'checkpoints')
  config.dataset.image_size += 8
  train_loop.linear_evaluation(config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'was embedded with other settings' in out and 'embedding' in out
  # That workdir now holds the larger size's evaluation: not reported as
  # this size's.
  config.dataset.image_size -= 8
  with pytest.raises(ValueError, match='holds another linear evaluation'):
    train_loop.linear_evaluation(config, str(tmp_path))


@pytest.mark.parametrize('probe', [dict(l2_min=0.0), dict(l2_max=float('inf')),
                                   dict(num_l2=0), dict(l2_min=1.0, l2_max=0.1),
                                   dict(lbfgs_iterations=0)])
def test_bad_probe_grid_fails_before_any_work(dirs, tmp_path, probe):
  config = _linear_eval_config(dirs, checkpoint='', encoder_init='random',
                               protocol='precomputed')
  config.probe.update(probe)
  with pytest.raises(ValueError, match='--config.probe.'):
    train_loop.linear_evaluation(config, str(tmp_path / 'eval'))
  assert not os.path.exists(tmp_path / 'eval')


def test_precomputed_protocol_stops_on_sigterm_and_resumes(
    dirs, pretrained, tmp_path, monkeypatch):
  config = _linear_eval_config(dirs, checkpoint=pretrained['workdir'],
                               protocol='precomputed')
  config.probe.update(l2_max=1.0, l2_min=1e-2, num_l2=2, lbfgs_iterations=5)
  uninterrupted = train_loop.linear_evaluation(config, str(tmp_path / 'a'))

  class SignalledAtOnce(preemption.StopSignal):
    def __enter__(self):
      super().__enter__()
      self.received = 'SIGTERM'
      return self

  with monkeypatch.context() as patch:
    patch.setattr(preemption, 'StopSignal', SignalledAtOnce)
    with pytest.raises(preemption.Preempted,
                       match='during the linear probe, before any split was '
                       'embedded; run the same command to resume'):
      train_loop.linear_evaluation(config, str(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'b' / 'results.json')
  resumed = train_loop.linear_evaluation(config, str(tmp_path / 'b'))
  assert resumed['top1'] == uninterrupted['top1']


def test_precomputed_protocol_refuses_finetuning(dirs, pretrained, tmp_path):
  config = _linear_eval_config(dirs, checkpoint=pretrained['workdir'],
                               protocol='precomputed', finetune=True)
  with pytest.raises(ValueError, match='--config.protocol=augmented'):
    train_loop.linear_evaluation(config, str(tmp_path))


def test_random_encoder_baseline_is_a_config_switch(dirs, tmp_path):
  config = _linear_eval_config(dirs, encoder_init='random', checkpoint='')
  results = train_loop.linear_evaluation(config, str(tmp_path))
  assert results['encoder'] == 'random'
  assert results['num_examples'] == NUM_TEST


def test_eval_batch_that_does_not_divide_names_its_own_flag(dirs, tmp_path):
  config = _linear_eval_config(dirs, checkpoint='')
  config.eval.global_batch_size = 6
  with pytest.raises(ValueError, match='--config.eval.global_batch_size'):
    train_loop.linear_evaluation(config, str(tmp_path))


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


def test_a_linear_evaluation_checkpoint_as_the_encoder_says_what_to_pass(
    dirs, tmp_path):
  config = _linear_eval_config(dirs)
  encoder = '/runs/byol/checkpoints/checkpoint_000000012.npz'
  evaluation = tmp_path / 'eval'
  saved = checkpoint.save(
      str(evaluation / 'checkpoints'), 4, linear_eval.init_state(config, 10),
      dict(kind='linear_eval', config=config.to_dict(), encoder=encoder),
      keep=1)
  message = (f'checkpoint {saved} is a linear-evaluation checkpoint, not a '
             "pretraining one; pass the pretraining checkpoint (its workdir's "
             'checkpoints/ file) instead, e.g. the one it evaluated, '
             f'{encoder}')
  config.checkpoint = str(evaluation)
  with pytest.raises(checkpoint.CheckpointError) as error:
    train_loop.linear_evaluation(config, str(tmp_path / 'eval2'))
  assert str(error.value) == message
  assert not os.path.exists(tmp_path / 'eval2')
  # A pretraining that warm-starts from it (--config.init_from) is told too.
  state = byol.init_state(tiny.pretrain_config(), 10, (16, 16, 3))
  with pytest.raises(checkpoint.CheckpointError) as error:
    train_loop.warm_start(state, saved, with_opt_state=False)
  assert str(error.value) == message


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


class _State(NamedTuple):
  step: np.ndarray
  w: np.ndarray


def test_resuming_on_another_topology_warns_it_is_not_bitwise(tmp_path,
                                                              capsys):
  checkpoint.save(str(tmp_path), 3, _State(np.int32(3), np.ones(2)),
                  dict(topology=dict(processes=2, devices=8)), keep=1)
  restored, metadata = train_loop.restore_latest(
      _State(np.int32(0), np.zeros(2)), str(tmp_path))
  assert int(restored.step) == 3
  assert metadata['topology'] == dict(processes=2, devices=8)
  np.testing.assert_array_equal(restored.w, np.ones(2))
  printed = capsys.readouterr()
  assert printed.err.startswith(
      "warning: checkpoint written on {'processes': 2, 'devices': 8}, "
      "resuming on {'processes': 1, 'devices': 4}")
  assert not printed.out  # warnings go to stderr, like errors


@pytest.mark.parametrize('valid_top1s,warning', [
    ([0.80, 0.84, 0.86, 0.865, 0.867],
     'warning: the chosen l2 1.00e-06 is at the edge of the grid (valid '
     'top-1 0.8670, against 0.8650 at 1.00e-05); a wider grid may do better, '
     'e.g. --config.probe.l2_min=1e-08 --config.probe.num_l2=7'),
    ([0.9, 0.8, 0.7, 0.6, 0.5],
     'warning: the chosen l2 1.00e-02 is at the edge of the grid (valid '
     'top-1 0.9000, against 0.8000 at 1.00e-03); a wider grid may do better, '
     'e.g. --config.probe.l2_max=1e+00 --config.probe.num_l2=7'),
    ([0.8, 0.85, 0.86, 0.85, 0.8], None),  # best inside the grid
    ([0.5, 0.5, 0.4, 0.3, 0.2], None),  # a tie with its neighbour
])
def test_probe_grid_edge_warns_with_the_overrides_that_widen_it(valid_top1s,
                                                                warning):
  grid = np.geomspace(1e-2, 1e-6, 5)
  assert train_loop.grid_edge_warning(grid, valid_top1s) == warning


def test_an_image_folder_is_part_of_the_evaluations_identity():
  config = tiny.linear_eval_config()
  config.dataset.update(name='image_folder', data_dir='/data/a')
  saved = dict(encoder='runs/a', config=config.to_dict())
  train_loop.check_same_evaluation(config, 'runs/a', saved, 'eval')
  config.dataset.data_dir = '/data/b'
  with pytest.raises(ValueError, match='dataset.data_dir /data/a -> /data/b'):
    train_loop.check_same_evaluation(config, 'runs/a', saved, 'eval')
  # A TFDS dataset is the same wherever its data_dir is.
  config.dataset.name = 'fashion_mnist'
  saved['config']['dataset']['name'] = 'fashion_mnist'
  train_loop.check_same_evaluation(config, 'runs/a', saved, 'eval')


def test_resuming_a_pretraining_on_other_data_warns(capsys):
  config = tiny.pretrain_config()
  saved = dict(config=config.to_dict())
  train_loop.warn_if_other_data(config, saved)
  train_loop.warn_if_other_data(config, {})  # a fresh run
  assert capsys.readouterr() == ('', '')
  config.dataset.update(name='image_folder', data_dir='/data/mine')
  train_loop.warn_if_other_data(config, saved)
  printed = capsys.readouterr()
  assert not printed.out  # warnings go to stderr, like errors
  assert printed.err == (
      "warning: resuming a pretraining on other data (dataset.name "
      "'fashion_mnist' -> 'image_folder'; dataset.data_dir '' -> "
      "'/data/mine'); to "
      'start afresh from its weights, use a new --workdir with '
      '--config.init_from\n')


@pytest.mark.parametrize('devices, steps, start, banner', [
    (1, 1, 0, 'pretraining on fashion_mnist: 64 images, 1 step of 16 on 1 '
     'device'),
    (4, 12, 3, 'pretraining on fashion_mnist: 64 images, 12 steps of 16 on 4 '
     'devices, resuming at step 3'),
])
def test_pretrain_banner_counts_in_the_singular_and_plural(devices, steps,
                                                           start, banner):
  schedules = byol.Schedules(global_batch_size=16, warmup_steps=0,
                             total_steps=steps)
  assert train_loop.pretrain_banner(tiny.pretrain_config(), 64, schedules,
                                    devices, start) == banner


def test_the_first_progress_line_leaves_out_the_compiling_step(
    tmp_path, capsys, monkeypatch):
  now = [0.0]
  monkeypatch.setattr(train_loop.progress, 'Progress', functools.partial(
      progress.Progress, clock=lambda: now[0]))
  metrics = parallel.replicate(dict(loss=np.float32(1.0),
                                    top1_accuracy=np.float32(0.5)))

  def step_fn(state, batch):
    del batch
    now[0] += 30.0 if now[0] == 0.0 else 0.5  # the first step compiles
    return state._replace(step=state.step + 1), metrics

  config = tiny.pretrain_config()
  config.logging.log_every_steps = 5
  train_loop.run_steps(
      step_fn, parallel.replicate(_State(np.int32(0), np.zeros(2))),
      itertools.repeat(None), config=config, workdir=str(tmp_path),
      total_steps=10, images_per_step=16, metadata={})
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(' | loss')[0] for line in lines] == [
      'step 5/10 | 2.00 steps/s | 32 img/s | ETA 2s',
      'step 10/10 | 2.00 steps/s | 32 img/s | ETA 0s']
