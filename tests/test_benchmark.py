"""The benchmark loads --config files through public Python only."""

import json
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


def test_benchmark_compares_compute_dtypes_of_a_config(tmp_path):
  config_file = tmp_path / 'tiny_config.py'
  config_file.write_text('from tests import tiny\n\n\n'
                         'def get_config():\n'
                         '  return tiny.pretrain_config()\n')
  output = tmp_path / 'benchmark.json'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark', '--settings=',
       f'--config={config_file}', '--compute_dtype=float32,bfloat16',
       '--steps=2', '--pipeline=False', f'--output={output}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  header = result.stdout.splitlines()[0].split()
  assert header[:3] == ['setting', 'conv', 'dtype'], result.stdout
  rows = json.loads(output.read_text())['steps']
  assert [r['compute_dtype'] for r in rows] == ['float32', 'bfloat16']
  for row in rows:
    assert row['batch'] == 16 and row['image_size'] == 16
    assert row['step_gflop'] > 0 and row['matmul_peak_gflops'] > 0
    assert 0 < row['step_s_min'] <= row['step_s_median'] <= row['step_s_max']


@pytest.mark.parametrize('flag, message', [
    ('--settings=D', "unknown setting 'D'; use --settings with some of A,B,C"),
    ('--compute_dtype=float16',
     "unknown --compute_dtype 'float16'; use some of float32,bfloat16"),
    ('--conv=bogus', "unknown --conv 'bogus'; use some of auto,patches,xla"),
    ('--settings=', 'nothing to measure; pass --settings=A,B (or C)'),
    ('--output=/nonexistent/x.json',
     '--output=/nonexistent/x.json: folder /nonexistent does not exist'),
    ('--config=experiments/configs/byol.py:bogus',
     "cannot load --config=experiments/configs/byol.py:bogus: ValueError: "
     "unknown preset 'bogus'"),
    ('--steps=0', 'flag --steps=0: 0 is not a positive integer'),
])
def test_benchmark_refuses_flags_that_cannot_work(flag, message):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark', flag,
       '--pipeline=False'], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2
  assert result.stderr.startswith(f'error: {message}')
  assert len(result.stderr.splitlines()) == 1
