r"""Images/s of one host's pretraining input pipeline, on ImageNet-like JPEGs.

  python -m experiments.pipeline_throughput --num_images=512 --batches=20

Writes `--num_images` JPEGs of ImageNet's typical size (500 × 375, quality
90, ~110 kB like ImageNet's) into a small TFDS dataset in a temporary
folder, then times `pipelines.pretrain_batches` on it exactly as
pretraining on ImageNet runs it: encoded examples shuffled, decoded, two
random resized crops to 224 px per image, batched for the local devices.
Only the host pipeline runs (no device work), so the rate is what the host
can feed at most.

It prints that rate next to what the devices consume per host,
`global_batch / hosts / step_seconds`, by default for the paper's setup: a
1000-epoch ResNet-50 run of 1.28 M images per epoch in about 8 h on 512
TPU v3 cores (64 hosts) — 44,500 images/s in all, 695 per host.

Measured on a 2-core x86 VM: 320-330 images/s, i.e. about 162 per core; a
host needs about 4.3 such cores to feed its share of that run, and TPU v3
hosts have 48 physical cores.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from byol_jax.data import pipelines
from experiments import cli

_NUM_IMAGES = flags.DEFINE_integer('num_images', 512,
                                   'JPEGs in the synthetic dataset.',
                                   lower_bound=1)
_BATCHES = flags.DEFINE_integer('batches', 20, 'Batches timed after warm-up.',
                                lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup_batches', 3,
                               'Batches read before timing (pipeline start).',
                               lower_bound=0)
_BATCH = flags.DEFINE_integer('host_batch_size', 64,
                              'Examples per batch on this host; a multiple '
                              'of --local_devices.', lower_bound=1)
_DEVICES = flags.DEFINE_integer('local_devices', 8,
                                'Local devices the batch is split over.',
                                lower_bound=1)
_GLOBAL_BATCH = flags.DEFINE_integer('global_batch_size', 4096,
                                     'Examples per step over all hosts.',
                                     lower_bound=1)
_HOSTS = flags.DEFINE_integer('hosts', 64, 'Hosts of the run compared with.',
                              lower_bound=1)
_STEP_SECONDS = flags.DEFINE_float(
    'step_seconds', 8 * 3600 / (1000 * 1_281_167 / 4096),
    'Seconds per training step of the run compared with (default: the '
    "paper's 1000 epochs in 8 h at batch 4096).")

_HEIGHT, _WIDTH = 375, 500  # ImageNet's most common size
_NAME = 'synthetic_jpeg'


class SyntheticJpeg(tfds.core.GeneratorBasedBuilder):
  """Natural-looking random JPEGs: smooth colour fields plus grain."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=1000),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(_NUM_IMAGES.value)}

  def _generate_examples(self, count):
    rng = np.random.default_rng(0)
    for i in range(count):
      # Low-frequency colour (what JPEG compresses well) with grain on top
      # (what it does not), to land near ImageNet's ~110 kB per image.
      coarse = rng.uniform(0, 255, (_HEIGHT // 25, _WIDTH // 25, 3))
      smooth = tf.image.resize(coarse[None], (_HEIGHT, _WIDTH),
                               'bicubic')[0].numpy()
      grain = rng.normal(0, 12, (_HEIGHT, _WIDTH, 3))
      image = np.clip(smooth + grain, 0, 255).astype(np.uint8)
      yield i, {'image': image, 'label': i % 1000}


def main(argv):
  cli.refuse_arguments(argv)
  if _BATCH.value % _DEVICES.value:
    cli.exit_with(ValueError(
        f'--host_batch_size={_BATCH.value} does not divide over '
        f'--local_devices={_DEVICES.value}; pass a multiple of '
        f'{_DEVICES.value}'), argv)
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as data_dir:
    builder = SyntheticJpeg(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
    files = tf.io.gfile.glob(os.path.join(builder.data_dir, '*.tfrecord*'))
    kilobytes = sum(tf.io.gfile.stat(f).length for f in files) / 1e3
    print(f'{_NUM_IMAGES.value} JPEGs of {_WIDTH}x{_HEIGHT}, '
          f'{kilobytes / _NUM_IMAGES.value:.0f} kB each; '
          f'{os.cpu_count()} CPU cores', flush=True)

    batches = pipelines.pretrain_batches(
        _NAME, data_dir=data_dir, fashion_mnist_dir='',
        global_batch_size=_BATCH.value, num_local_devices=_DEVICES.value,
        process_index=0, process_count=1, image_size=224, seed=0)
    for _ in range(_WARMUP.value):
      batch = next(batches)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      batch = next(batches)
    seconds = time.perf_counter() - start

  assert batch['view1'].shape == (_DEVICES.value,
                                  _BATCH.value // _DEVICES.value, 224, 224, 3)
  produced = _BATCHES.value * _BATCH.value / seconds
  consumed = _GLOBAL_BATCH.value / _HOSTS.value / _STEP_SECONDS.value
  print(f'host pipeline: {produced:.0f} images/s ({2 * produced:.0f} views of '
        f'224 px/s), {produced / os.cpu_count():.0f} images/s per core')
  print(f'one step consumes {_GLOBAL_BATCH.value / _HOSTS.value:.0f} images '
        f'per host every {_STEP_SECONDS.value:.3f} s = {consumed:.0f} '
        f'images/s per host ({_HOSTS.value} hosts, global batch '
        f'{_GLOBAL_BATCH.value})')
  print(f'cores per host needed to keep up at this rate: '
        f'{consumed / (produced / os.cpu_count()):.1f}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
