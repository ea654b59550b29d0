"""Run metrics for people: a JSONL file, TensorBoard events and a PNG plot.

Only process 0 writes (pass `enabled=False` elsewhere). `metrics.jsonl` holds
one JSON object per logged step: `{"step": int, "<metric>": float, ...}`.
"""

import json
import math
import os
from typing import Mapping

import numpy as np
import tensorflow as tf


class MetricWriter:
  """Appends scalars to `<workdir>/metrics.jsonl` and TensorBoard events.

  Nothing is created before the first `write`: a run that fails before its
  first logged step (bad data, say) leaves its workdir as it was.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    self._workdir = workdir
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self._summary = None  # the TensorBoard writer, made by the first write

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` (name → number) at `step`."""
    if not self._enabled:
      return
    if self._summary is None:
      tf.io.gfile.makedirs(self._workdir)
      self._summary = tf.summary.create_file_writer(
          os.path.join(self._workdir, 'tensorboard'))
    row = {'step': int(step)}
    row.update({name: float(value) for name, value in scalars.items()})
    with tf.io.gfile.GFile(self.jsonl_path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    with self._summary.as_default(step=int(step)):
      for name, value in scalars.items():
        tf.summary.scalar(name, float(value))
    self._summary.flush()

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def read_jsonl(path: str) -> list[dict[str, float]]:
  """All rows of a metrics.jsonl file; a torn last line (kill) is skipped."""
  rows = []
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def plot_metrics(jsonl_path: str, png_path: str,
                 names: tuple[str, ...]) -> None:
  """Draws one panel per metric name against `step` and saves a PNG.

  A resumed run may have logged some steps twice; the latest row wins.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  by_step = {row['step']: row for row in read_jsonl(jsonl_path)}
  rows = [by_step[s] for s in sorted(by_step)]
  names = [n for n in names if any(n in row for row in rows)]
  if not names:
    return
  columns = min(len(names), 3)
  lines = math.ceil(len(names) / columns)
  fig, axes = plt.subplots(lines, columns, figsize=(4.5 * columns, 3 * lines),
                           squeeze=False)
  for ax, name in zip(axes.flat, names):
    points = [(row['step'], row[name]) for row in rows if name in row]
    steps, values = np.array(points).T
    ax.plot(steps, values)
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  fig.tight_layout()
  with tf.io.gfile.GFile(png_path, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)
