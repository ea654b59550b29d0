r"""Speed of one BYOL pretraining step and of the host input pipeline.

  python -m experiments.benchmark                      # settings A and B
  python -m experiments.benchmark --settings=A --conv=xla,auto
  python -m experiments.benchmark --settings= \
      --config=experiments/configs/byol.py:demo --pipeline=False
  python -m experiments.benchmark --settings=C \
      --compute_dtype=float32,bfloat16 --pipeline=False   # on a GPU or TPU

Settings (synthetic uint8 batches, one device, paper heads 4096 → 256,
on-device augmentations included):
  A: ResNet-18, ImageNet stem, 64 px, batch 32;
  B: ResNet-50, ImageNet stem, 64 px, batch 16;
  C: ResNet-50, ImageNet stem, 224 px, batch 128 (for an accelerator: on
     this repo's 2-core CPUs one step takes minutes).
The step runs on JAX's default backend; `--compute_dtype` chooses the
networks' compute precision (the matmul peak is measured in it too).

Each (setting, conv implementation, dtype) runs in its own subprocess, so compile
time, initialisation time and peak memory are its own. Reports compile and
init time, steady-state s/step (median, min, max), images/s, XLA's FLOP count
of the step, the achieved GFLOP/s, this machine's f32 matmul peak measured in
the same run and the fraction of it reached, the peak resident memory of the
process next to the size of the train state, XLA's memory analysis of the
step (scratch for activations, donated and peak bytes), and the time share
of the augmentations. `--pipeline` adds the host input pipeline alone: two 224-px
views from JPEGs it generates, and the demo dataset. Writes everything as
JSON to `--output`.
"""

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from experiments import cli

_SETTINGS = flags.DEFINE_list('settings', ['A', 'B'], 'Built-in settings.')
_CONFIG = flags.DEFINE_string(
    'config', '', 'Also benchmark this pretraining config (file:preset), at '
    'its own batch size and image size on one device.')
_CONV = flags.DEFINE_list(
    'conv', ['auto'], 'Convolution implementations to compare: auto, xla, '
    'patches (see byol_jax/conv.py).')
_DTYPES = flags.DEFINE_list(
    'compute_dtype', ['float32'], 'Compute precisions to compare: float32, '
    'bfloat16 (--config.model.compute_dtype).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps after warm-up.',
                              lower_bound=1)
_PIPELINE = flags.DEFINE_boolean('pipeline', True,
                                 'Also measure the host input pipeline.')
_OUTPUT = flags.DEFINE_string('output', 'benchmark.json', 'JSON results.')
_ONE = flags.DEFINE_string('one', '', 'Internal: run one measurement and '
                           'print its JSON (setting or config).')

_BUILTIN = {
    'A': dict(depth=18, batch=32, size=64),
    'B': dict(depth=50, batch=16, size=64),
    'C': dict(depth=50, batch=128, size=224),
}


def _config(name: str):
  """The pretraining config of a built-in setting or a config file."""
  from experiments.configs import byol as byol_configs  # pylint: disable=g-import-not-at-top
  if name in _BUILTIN:
    setting = _BUILTIN[name]
    config = byol_configs.get_config('1000ep')
    config.model.encoder.depth = setting['depth']
    config.dataset.image_size = setting['size']
    config.training.global_batch_size = setting['batch']
    return config
  path, _, preset = name.partition(':')
  # The file as a module of its own, as --config of the entry points loads it.
  spec = importlib.util.spec_from_file_location('benchmarked', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def matmul_peak_gflops(dtype: str = 'float32', size: int = 2048,
                       repeats: int = 10) -> float:
  """Best GFLOP/s of a jitted size×size `dtype` matmul, default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((size, size), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def _timed_steps(step, state, batch, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    metrics['loss'].block_until_ready()
    times.append(time.perf_counter() - start)
  return times


def measure_step(name: str, compute_dtype: str, steps: int) -> dict:
  """All figures of one setting in `compute_dtype`, current conv choice."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from byol_jax import augment  # pylint: disable=g-import-not-at-top
  from byol_jax import byol  # pylint: disable=g-import-not-at-top
  from byol_jax import parallel  # pylint: disable=g-import-not-at-top

  config = _config(name)
  config.model.compute_dtype = compute_dtype
  batch_size = config.training.global_batch_size
  size = config.dataset.image_size
  num_classes = 1000
  schedules = byol.Schedules(global_batch_size=batch_size, warmup_steps=10,
                             total_steps=1000)
  device = jax.local_devices()[:1]

  start = time.perf_counter()
  state = byol.init_state(config, num_classes, (size, size, 3))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  rng = np.random.default_rng(0)
  images = lambda: rng.integers(0, 256, (1, batch_size, size, size, 3),
                                dtype=np.uint8)
  host_batch = dict(view1=images(), view2=images(),
                    labels=rng.integers(0, num_classes, (1, batch_size),
                                        dtype=np.int32))
  sharding = parallel.device_sharding(device)
  batch = jax.device_put(host_batch, sharding)
  replicated = jax.device_put(
      jax.tree.map(lambda x: np.asarray(x)[None], state), sharding)

  update = jax.pmap(byol.make_update_fn(config, num_classes, schedules),
                    axis_name=byol.AXIS_NAME, donate_argnums=0,
                    devices=device)
  start = time.perf_counter()
  compiled = update.lower(replicated, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  memory = _step_memory(compiled)

  replicated, _ = update(replicated, batch)  # warm-up (runs, no compile)
  jax.block_until_ready(replicated)
  times = _timed_steps(update, replicated, batch, steps)

  # The augmentations alone, compiled the same way, for their share.
  def augment_both(b):
    key = jax.random.key(0)
    return (augment.augment_view(b['view1'], key, config.augment.view1),
            augment.augment_view(b['view2'], key, config.augment.view2))
  augment_fn = jax.pmap(augment_both, axis_name=byol.AXIS_NAME,
                        devices=device)
  jax.block_until_ready(augment_fn(batch))
  augment_times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(augment_fn(batch))
    augment_times.append(time.perf_counter() - start)

  median = statistics.median(times)
  peak = matmul_peak_gflops(compute_dtype)
  return dict(
      setting=name, depth=config.model.encoder.depth, batch=batch_size,
      image_size=size, backend=jax.default_backend(),
      compute_dtype=compute_dtype,
      conv=os.environ.get('BYOL_JAX_CONV', 'auto'),
      compile_s=compile_s, init_s=init_s,
      step_s_median=median, step_s_min=min(times), step_s_max=max(times),
      images_per_s=batch_size / median, step_gflop=flops / 1e9,
      achieved_gflops=flops / median / 1e9, matmul_peak_gflops=peak,
      fraction_of_peak=flops / median / 1e9 / peak,
      augment_s_median=statistics.median(augment_times),
      augment_fraction=statistics.median(augment_times) / median,
      train_state_mb=state_bytes / 2**20, **memory,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _step_memory(compiled) -> dict[str, float]:
  """XLA's buffer sizes for one compiled step, in MiB.

  `step_temp_mb` is the scratch space the step allocates (activations kept
  for the backward pass and workspaces); `step_donated_mb` the inputs whose
  buffers the outputs reuse (the donated train state). `step_peak_mb` =
  inputs + outputs - donated + scratch, the most the step can hold at once,
  against the bound of twice the train state plus the scratch.
  """
  stats = compiled.memory_analysis()
  mib = lambda n: n / 2**20
  arguments = mib(stats.argument_size_in_bytes)
  outputs = mib(stats.output_size_in_bytes)
  donated = mib(stats.alias_size_in_bytes)
  temp = mib(stats.temp_size_in_bytes)
  return dict(step_arguments_mb=arguments, step_outputs_mb=outputs,
              step_donated_mb=donated, step_temp_mb=temp,
              step_peak_mb=arguments + outputs - donated + temp)


def _run_one(name: str, conv: str, compute_dtype: str, steps: int) -> dict:
  env = dict(os.environ, BYOL_JAX_CONV=conv, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('XLA_FLAGS', None)  # one device, whatever the caller simulates
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark', f'--one={name}',
       f'--compute_dtype={compute_dtype}', f'--steps={steps}'], env=env,
      capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'benchmark of {name} ({conv}, {compute_dtype}) '
                       f'failed: {result.stderr.strip().splitlines()[-1:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def _write_jpegs(directory: str, count: int) -> list[str]:
  """ImageNet-sized JPEGs (smooth noise, so they compress like photos)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):
    small = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image = tf.image.resize(small, (375, 500), method='bilinear')
    data = tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90)
    path = os.path.join(directory, f'{i:05d}.jpg')
    tf.io.write_file(path, data)
    paths.append(path)
  return paths


def measure_pipeline(seconds: float = 10.0) -> dict:
  """Host images/s: two 224-px views from JPEGs, and the demo dataset."""
  import itertools  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from byol_jax.data import crops  # pylint: disable=g-import-not-at-top
  from byol_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  from experiments.configs import byol as byol_configs  # pylint: disable=g-import-not-at-top

  def rate(iterator, images_per_batch):
    next(iterator)  # start-up (threads, first epoch) not counted
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      next(iterator)
      count += images_per_batch
    return count / (time.perf_counter() - start)

  with tempfile.TemporaryDirectory() as directory:
    paths = _write_jpegs(directory, 256)
    ds = tf.data.Dataset.from_tensor_slices(paths).repeat().enumerate()

    def two_views(index, path):
      image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
      seed = tf.stack([index, tf.constant(0, tf.int64)])
      return tuple(crops.random_resized_crop(
          image, seed + view, 224, (0.08, 1.0), (3 / 4, 4 / 3))
                   for view in (0, 1))
    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE).batch(64)
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    jpeg_rate = rate(iter(ds.prefetch(4).with_options(options)
                          .as_numpy_iterator()), 64)

  demo = byol_configs.get_config('demo')
  batches = pipelines.pretrain_batches(
      demo.dataset.name, data_dir=demo.dataset.data_dir or None,
      fashion_mnist_dir=demo.dataset.fashion_mnist_dir,
      global_batch_size=demo.training.global_batch_size, num_local_devices=1,
      process_index=0, process_count=1, image_size=demo.dataset.image_size,
      seed=0)
  demo_rate = rate(itertools.chain(batches), demo.training.global_batch_size)
  return dict(imagenet_jpeg_two_views_224_images_per_s=jpeg_rate,
              demo_images_per_s=demo_rate,
              host_cpus=os.cpu_count())


def _table(rows: list[dict], setting_width: int) -> str:
  """The rows as a table, its first line the header."""
  header = (f'{"setting":<{setting_width}}{"conv":<9}{"dtype":<9}'
            f'{"compile s":>10}'
            f'{"init s":>8}'
            f'{"s/step":>8}{"min":>7}{"max":>7}{"img/s":>8}{"GFLOP":>8}'
            f'{"GFLOP/s":>9}{"peak":>7}{"frac":>6}{"aug":>6}{"RSS MB":>8}'
            f'{"state MB":>9}{"temp MB":>8}{"step MB":>8}')
  lines = [header]
  for r in rows:
    lines.append(
        f'{r["setting"]:<{setting_width}}{r["conv"]:<9}'
        f'{r["compute_dtype"]:<9}'
        f'{r["compile_s"]:>10.1f}'
        f'{r["init_s"]:>8.1f}{r["step_s_median"]:>8.3f}{r["step_s_min"]:>7.3f}'
        f'{r["step_s_max"]:>7.3f}{r["images_per_s"]:>8.1f}'
        f'{r["step_gflop"]:>8.1f}{r["achieved_gflops"]:>9.1f}'
        f'{r["matmul_peak_gflops"]:>7.0f}{r["fraction_of_peak"]:>6.2f}'
        f'{r["augment_fraction"]:>6.2f}{r["peak_rss_mb"]:>8.0f}'
        f'{r["train_state_mb"]:>9.0f}{r["step_temp_mb"]:>8.0f}'
        f'{r["step_peak_mb"]:>8.0f}')
  return '\n'.join(lines)


def _check_choices(flag: str, values: list[str], allowed: tuple[str, ...],
                   argv: list[str]) -> None:
  """One `error:` line and exit 2 if a value of list flag `flag` is unknown."""
  for value in values:
    if value not in allowed:
      cli.exit_with(ValueError(
          f'unknown --{flag} {value!r}; use some of {",".join(allowed)}'),
          argv)


def _check_flags(names: list[str], argv: list[str]) -> None:
  """One `error:` line and exit 2 for a flag that cannot work."""
  from byol_jax import conv  # pylint: disable=g-import-not-at-top
  from byol_jax import networks  # pylint: disable=g-import-not-at-top
  if not names:
    cli.exit_with(ValueError(
        'nothing to measure; pass --settings=A,B (or C) and/or '
        '--config=<file>.py:<preset>'), argv)
  output_dir = os.path.dirname(os.path.abspath(_OUTPUT.value))
  if not os.path.isdir(output_dir):
    cli.exit_with(ValueError(
        f'--output={_OUTPUT.value}: folder {output_dir} does not exist; '
        'create it or pass another path'), argv)
  _check_choices('conv', _CONV.value, conv.IMPLEMENTATIONS, argv)
  _check_choices('compute_dtype', _DTYPES.value, networks.COMPUTE_DTYPES,
                 argv)
  for name in names:
    if name not in _BUILTIN and ':' not in name and not name.endswith('.py'):
      cli.exit_with(ValueError(
          f'unknown setting {name!r}; use --settings with some of '
          f'{",".join(_BUILTIN)}, or --config=<file>.py:<preset>'), argv)
  for name in names:
    if name not in _BUILTIN:
      try:
        _config(name)
      except Exception as e:  # pylint: disable=broad-except
        # Whatever the config file raised, as the entry points report it.
        cli.exit_with(ValueError(
            f'cannot load --config={name}: {type(e).__name__}: '
            f'{str(e).splitlines()[0] if str(e) else ""}'), argv)


def main(argv):
  cli.refuse_arguments(argv)
  if _ONE.value:
    (compute_dtype,) = _DTYPES.value
    print(json.dumps(measure_step(_ONE.value, compute_dtype, _STEPS.value)))
    return
  names = [s for s in _SETTINGS.value if s] + (
      [_CONFIG.value] if _CONFIG.value else [])
  _check_flags(names, argv)
  width = max(len('setting'), *(len(name) for name in names)) + 2
  print(_table([], width), flush=True)
  rows = []
  for name in names:
    for conv in _CONV.value:
      for compute_dtype in _DTYPES.value:
        try:
          rows.append(_run_one(name, conv, compute_dtype, _STEPS.value))
        except RuntimeError as e:
          cli.exit_with(e, argv)
        print(_table(rows[-1:], width).splitlines()[-1], flush=True)
  results = dict(steps=rows)
  if _PIPELINE.value:
    results['pipeline'] = measure_pipeline()
  print('\n' + _table(rows, width))
  if 'pipeline' in results:
    p = results['pipeline']
    print(f'host pipeline: {p["imagenet_jpeg_two_views_224_images_per_s"]:.0f}'
          f' img/s (two 224-px views from JPEGs), {p["demo_images_per_s"]:.0f}'
          ' img/s (demo dataset)')
  with open(_OUTPUT.value, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
