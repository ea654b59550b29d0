"""Configs: presets, command-line overrides, and one-line errors."""

import glob
import os
import re
import subprocess
import sys

import pytest

from byol_jax import train_loop
from byol_jax.data import sources
from experiments.configs import byol as byol_configs
from experiments.configs import linear_eval as linear_eval_configs
from tests import tiny
from tests.test_data_fashion_mnist import write_fashion_mnist

REFERENCE_PRESETS = {'40ep': (0.45, 1e-6, 0.97), '100ep': (0.45, 1e-6, 0.99),
                     '300ep': (0.3, 1e-6, 0.99), '1000ep': (0.2, 1.5e-6, 0.996)}


@pytest.mark.parametrize('preset', sorted(REFERENCE_PRESETS))
def test_imagenet_presets_carry_the_reference_values(preset):
  config = byol_configs.get_config(preset)
  lr, wd, ema = REFERENCE_PRESETS[preset]
  assert config.optimizer.base_learning_rate == lr
  assert config.optimizer.weight_decay == wd
  assert config.training.base_target_ema == ema
  assert config.training.num_epochs == float(preset[:-2])
  assert config.training.global_batch_size == 4096
  assert config.model.projector_hidden_size == 4096
  assert config.model.projector_output_size == 256
  assert config.augment.view1.blur_prob == 1.0
  assert config.augment.view2.solarize_prob == 0.2


def test_linear_eval_presets():
  config = linear_eval_configs.get_config('imagenet')
  assert config.optimizer.nesterov and config.optimizer.momentum == 0.9
  assert config.optimizer.base_learning_rate == 0.2
  assert config.training.num_epochs == 80.0
  assert config.protocol == 'augmented'
  # The paper's grid for its transfer protocol: 45 values, 1e-6 to 1e5.
  assert (config.probe.num_l2, config.probe.l2_min, config.probe.l2_max) == (
      45, 1e-6, 1e5)
  demo = linear_eval_configs.get_config('demo')
  assert demo.protocol == 'precomputed'
  assert demo.model.encoder == byol_configs.get_config('demo').model.encoder


def _run_pretrain(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.pretrain', '--workdir=/nonexistent',
       *flags], capture_output=True, text=True, timeout=120)


def _print_config(*flags):
  """Parses flags exactly as the entry points do and prints two fields."""
  code = ('import sys\n'
          'from absl import app\n'
          'from experiments import cli\n'
          'from experiments import entry\n'
          'c = cli.define_config(cli.config_path("byol.py:demo"), "")\n'
          'app.run(lambda _: print(c.value.optimizer.weight_decay, '
          'c.value.training.global_batch_size), '
          'flags_parser=cli.parse_flags)\n')
  return subprocess.run([sys.executable, '-c', code, '--workdir=x', *flags],
                        capture_output=True, text=True, timeout=120)


def test_override_is_parsed():
  result = _print_config('--config=experiments/configs/byol.py:300ep',
                         '--config.optimizer.weight_decay=2e-6',
                         '--config.training.global_batch_size=512')
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['2e-06', '512']


@pytest.mark.parametrize('flag,message', [
    ('--config.optimizer.weight_decayy=2e-6',
     'unknown config key in --config.optimizer.weight_decayy; did you mean '
     '"weight_decay"?'),
    ('--config.training.global_batch_size=abc',
     "--config.training.global_batch_size=abc: expected an int (the preset's "
     'value is 128); pass e.g. --config.training.global_batch_size=128'),
])
@pytest.mark.parametrize('config_flag', [
    ['--config=experiments/configs/byol.py:demo'],
    [],  # the default config: its overrides are applied at flag definition
])
def test_bad_override_fails_with_one_line_before_any_work(config_flag, flag,
                                                          message):
  result = _run_pretrain(*config_flag, flag)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize('flag,expected,preset_value', [
    ('--config.probe.num_l2=2.5', 'an int', '5'),
    ('--config.probe.l2_min=small', 'a float', '1e-06'),
    ('--config.finetune=maybe', 'true or false', 'False'),
])
def test_override_of_the_wrong_type_says_what_to_pass(flag, expected,
                                                      preset_value):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.linear_eval',
       '--workdir=/nonexistent',
       '--config=experiments/configs/linear_eval.py:demo', flag],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  name = flag.split('=')[0]
  assert result.stderr == (
      f"error: {flag}: expected {expected} (the preset's value is "
      f'{preset_value}); pass e.g. {name}={preset_value}\n'), result.stderr


@pytest.mark.parametrize('preset', ['30ep', 'nonsense'])
def test_unknown_preset_fails_with_one_line(preset):
  result = _run_pretrain(f'--config=experiments/configs/byol.py:{preset}')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  # Our own words, without the config file's `ValueError:` prefix.
  assert len(lines) == 1 and lines[0].startswith(
      f"error: unknown preset '{preset}'; choose one of"), result.stderr


@pytest.mark.parametrize('preset,depth,width,zero_init', [
    ('1000ep', 50, 1.0, True),
    ('300ep,resnet50x1', 50, 1.0, True),
    ('1000ep,resnet50x2', 50, 2.0, False),
    ('1000ep,resnet50x4', 50, 4.0, False),
    ('1000ep,resnet200x2', 200, 2.0, False),
])
def test_table1_encoder_presets(preset, depth, width, zero_init):
  config = byol_configs.get_config(preset)
  encoder = config.model.encoder
  assert (encoder.depth, encoder.width_multiplier) == (depth, width)
  assert encoder.zero_init_last_bn == zero_init
  # The encoder does not change the length's hyper-parameters.
  epochs = preset.split(',')[0]
  lr, wd, ema = REFERENCE_PRESETS[epochs]
  assert (config.optimizer.base_learning_rate, config.optimizer.weight_decay,
          config.training.base_target_ema) == (lr, wd, ema)
  linear = linear_eval_configs.get_config(
      'imagenet' + preset[len(epochs):])
  assert linear.model.encoder == encoder


def test_every_imagenet_preset_states_its_command_result_and_time():
  doc = byol_configs.__doc__
  assert 'python -m experiments.pretrain' in doc
  assert 'python -m experiments.linear_eval' in doc
  for row in ('40ep ', '100ep ', '300ep ', '1000ep ', '1000ep,resnet50x2 ',
              '1000ep,resnet50x4 ', '1000ep,resnet200x2 '):
    line = next(l for l in doc.splitlines() if l.strip().startswith(row))
    assert '%' in line and (' h' in line or ' min' in line), line
  for released in ('pretrain_res50x1.pkl', 'pretrain_res200x2.pkl'):
    assert released in linear_eval_configs.__doc__


@pytest.mark.parametrize('get_config,preset', [
    (byol_configs.get_config, '1000ep,resnet50'),
    (byol_configs.get_config, '1000ep,vit'),
    (linear_eval_configs.get_config, 'imagenet,resnet50x'),
])
def test_unknown_encoder_is_a_clear_error(get_config, preset):
  with pytest.raises(ValueError, match='unknown encoder'):
    get_config(preset)


@pytest.mark.parametrize('flags,message', [
    (['--config=experiments/configs/nope.py:demo'],
     'cannot load experiments/configs/nope.py'),
    (['--config.training.global_batch_size=0'],
     'global batch size 0 must be positive'),
    (['--config.dataset.image_size=0'],
     'dataset.image_size=0; set --config.dataset.image_size to a positive'),
])
def test_missing_config_file_and_empty_batch_are_one_line(flags, message):
  result = _run_pretrain(*flags)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  workdir = tmp_path / 'file'
  workdir.write_text('not a folder')
  result = _run_pretrain(f'--workdir={workdir}')  # the last one counts
  assert result.returncode == 2
  assert result.stderr.strip() == (
      f'error: --workdir={workdir} is a file, not a folder; pass a new or '
      'existing folder you can write to')
  assert workdir.read_text() == 'not a folder'


def test_workdir_that_cannot_be_created_is_one_line_before_any_work(
    tmp_path):
  parent = tmp_path / 'file'
  parent.write_text('not a folder')
  workdir = parent / 'run'
  result = _run_pretrain(f'--workdir={workdir}')  # the last one counts
  assert result.returncode == 2
  assert result.stderr.strip() == (
      f'error: --workdir={workdir} cannot be created: {parent} is a file; '
      'pass a new or existing folder you can write to')
  assert not result.stdout  # nothing started
  assert sorted(os.listdir(tmp_path)) == ['file']


def test_workdir_under_a_read_only_folder_is_refused(tmp_path,
                                                     monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from experiments import entry  # pylint: disable=g-import-not-at-top
  read_only = str(tmp_path / 'ro')
  os.mkdir(read_only)
  real_mkdtemp = entry.tempfile.mkdtemp

  def mkdtemp(prefix, dir):  # pylint: disable=redefined-builtin
    if dir == read_only:  # chmod does not stop root: pretend it does
      raise PermissionError(13, 'Permission denied')
    return real_mkdtemp(prefix=prefix, dir=dir)

  monkeypatch.setattr(entry.tempfile, 'mkdtemp', mkdtemp)
  assert entry.workdir_problem(f'{read_only}/a/b', tf.io.gfile) == (
      f'cannot be created in {read_only} (Permission denied)')
  assert entry.workdir_problem(str(tmp_path / 'new'), tf.io.gfile) is None
  assert entry.workdir_problem(read_only, tf.io.gfile) is None  # exists
  assert os.listdir(tmp_path) == ['ro']  # the check left nothing behind


def test_unprepared_dataset_is_one_line_without_tfds_warnings(tmp_path):
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.pretrain',
       f'--workdir={tmp_path / "run"}',
       '--config=experiments/configs/byol.py:demo',
       '--config.dataset.name=cifar10',
       f'--config.dataset.data_dir={data_dir}'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  # TFDS warns 'Variant folder ... has no dataset_info.json' unless hushed.
  assert result.stderr.strip() == (
      f'error: cifar10 is not prepared in {data_dir}: run `tfds build cifar10 '
      f'--data_dir={data_dir}` on a machine with internet, then copy its '
      f'cifar10/ directory into {data_dir}/.'), result.stderr
  assert not (tmp_path / 'run').exists()


def test_a_number_as_dataset_name_is_one_line_naming_the_choices(tmp_path):
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.pretrain',
       f'--workdir={tmp_path / "run"}',
       '--config=experiments/configs/byol.py:demo',
       '--config.dataset.name=5', f'--config.dataset.data_dir={data_dir}'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip() == (
      "error: dataset.name '5' is not a dataset name (TFDS names are "
      'name[/config][:version]); pass --config.dataset.name=fashion_mnist, '
      f'image_folder or a TFDS dataset prepared in {data_dir}'), result.stderr
  assert not (tmp_path / 'run').exists()


def test_corrupt_prepared_dataset_is_one_line_and_leaves_no_files(tmp_path):
  source, data_dir = tmp_path / 'source', tmp_path / 'tfds'
  write_fashion_mnist(str(source), num_train=64, num_test=10)
  sources.dataset_spec('fashion_mnist', str(data_dir),
                       fashion_mnist_dir=str(source))  # prepares it
  # Damage records in the middle: TFDS's reader raises DataLossError at the
  # first batch, after the run has started.
  for path in glob.glob(str(data_dir / 'fashion_mnist' / '*' /
                            'fashion_mnist-train.tfrecord-*')):
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 3:len(data) // 3 + 64] = bytes(64)
    with open(path, 'wb') as f:
      f.write(data)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.pretrain', *tiny.pretrain_flags(
          data_dir=data_dir, fashion_mnist_dir=source, workdir=workdir,
          total_steps=3)],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert re.fullmatch(
      r"error: a prepared dataset file is corrupt \(corrupted record at \d+\); "
      r"delete that dataset's folder in the TFDS data_dir and prepare it "
      r"again", lines[0]), lines[0]
  assert not os.listdir(workdir)  # no metrics, events or checkpoints


@pytest.mark.parametrize('overrides,message', [
    (dict(max_steps=-1), 'training.max_steps=-1; set --config.training.'
     'max_steps to a positive step count'),
    (dict(num_epochs=0.0), 'training.num_epochs=0.0 gives no training step'),
])
def test_run_that_would_train_nothing_is_refused(overrides, message):
  config = byol_configs.get_config('demo')
  config.training.update(**overrides)
  with pytest.raises(ValueError, match=re.escape(message)):
    train_loop.run_length(config, num_train_examples=60_000)


@pytest.mark.parametrize('entry_point', ['pretrain', 'linear_eval',
                                         'benchmark'])
def test_help_exits_zero_and_unknown_flag_is_one_line(entry_point):
  module = f'experiments.{entry_point}'
  shown = subprocess.run([sys.executable, '-m', module, '--help'],
                         capture_output=True, text=True, timeout=120)
  assert shown.returncode == 0, shown.stderr
  assert f'python -m {module}' in shown.stdout
  if entry_point != 'benchmark':  # its flags are its own module's
    assert '--config:' in shown.stdout and '--workdir:' in shown.stdout
  unknown = subprocess.run([sys.executable, '-m', module, '--nonsense=1'],
                           capture_output=True, text=True, timeout=120)
  assert unknown.returncode == 2
  assert unknown.stderr == ("error: Unknown command line flag 'nonsense'; "
                            'pass --help for the valid flags\n')


@pytest.mark.parametrize('entry_point', ['pretrain', 'benchmark',
                                         'pipeline_throughput'])
def test_a_positional_argument_is_refused_before_any_work(entry_point):
  # A forgotten `--` before an override would otherwise run the preset.
  workdir = ['--workdir=/nonexistent'] if entry_point == 'pretrain' else []
  result = subprocess.run(
      [sys.executable, '-m', f'experiments.{entry_point}', *workdir,
       'config.training.max_steps=3'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr == ("error: unexpected argument "
                           "'config.training.max_steps=3'; every setting is a "
                           'flag, e.g. --config.training.max_steps=3\n')
