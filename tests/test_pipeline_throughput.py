"""The throughput script runs end to end on a few JPEGs and reports both rates."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reports_produced_and_consumed_images_per_second():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.pipeline_throughput',
       '--num_images=16', '--batches=2', '--warmup_batches=1',
       '--host_batch_size=8', '--local_devices=2', '--hosts=4',
       '--global_batch_size=64', '--step_seconds=0.5'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert re.search(r'16 JPEGs of 500x375, \d+ kB each', result.stdout)
  produced = re.search(r'host pipeline: (\d+) images/s', result.stdout)
  assert produced and int(produced.group(1)) > 0
  # 64 images / 4 hosts every 0.5 s.
  assert ('one step consumes 16 images per host every 0.500 s = 32 images/s '
          'per host' in result.stdout)
