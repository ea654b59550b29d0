"""The benchmark loads --config files through public Python only."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name, module, preset', [
    ('experiments/configs/byol.py:demo', 'byol', 'demo'),
    ('experiments/configs/byol.py:300ep,resnet50x2', 'byol',
     '300ep,resnet50x2'),
    ('experiments/configs/byol.py', 'byol', None),  # get_config's default
])
def test_config_file_loads_without_ml_collections_internals(name, module,
                                                            preset):
  # ml_collections' private loader is removed first: a release without it
  # must not break the benchmark.
  code = (
      'from ml_collections.config_flags import config_flags\n'
      'del config_flags._LoadConfigModule\n'
      'from experiments import benchmark\n'
      f'from experiments.configs import {module} as configs\n'
      f'want = configs.get_config(*{[preset] if preset else []!r})\n'
      f'assert benchmark._config({name!r}) == want\n'
      'print("same")\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['same']
