"""Configs: presets, command-line overrides, and one-line errors."""

import subprocess
import sys

import pytest

from experiments.configs import byol as byol_configs
from experiments.configs import linear_eval as linear_eval_configs

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
  demo = linear_eval_configs.get_config('demo')
  assert demo.model.encoder == byol_configs.get_config('demo').model.encoder


def _run_pretrain(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.pretrain', '--workdir=/nonexistent',
       *flags], capture_output=True, text=True, timeout=120)


def _print_config(*flags):
  """Parses flags exactly as the entry points do and prints two fields."""
  code = ('import sys\n'
          'from absl import app\n'
          'from ml_collections import config_flags\n'
          'from experiments import entry\n'
          'c = config_flags.DEFINE_config_file("config", lock_config=True)\n'
          'app.run(lambda _: print(c.value.optimizer.weight_decay, '
          'c.value.training.global_batch_size), '
          'flags_parser=entry.parse_flags)\n')
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
     "--config.training.global_batch_size=abc: invalid literal for int()"),
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


def test_unknown_preset_fails_with_one_line():
  result = _run_pretrain('--config=experiments/configs/byol.py:30ep')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown preset '30ep'" in lines[0], result.stderr
