"""The training loops: own cadence (feed, log, checkpoint), not maths.

`pretrain` and `linear_evaluation` validate what they can before any work,
resume from the latest checkpoint in `<workdir>/checkpoints` if there is one,
pmap their step once and run to the step count of the config. Each writes
metrics.jsonl, tensorboard/, metrics.png and results.json into the workdir.
"""

import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
from tensorflow.io import gfile

from byol_jax import byol
from byol_jax import checkpoint
from byol_jax import feature_probe
from byol_jax import linear_eval
from byol_jax import metric_writer
from byol_jax import multihost
from byol_jax import parallel
from byol_jax import preemption
from byol_jax import progress
from byol_jax import reference_checkpoint
from byol_jax.data import device_feed
from byol_jax.data import errors
from byol_jax.data import image_folder
from byol_jax.data import pipelines
from byol_jax.data import sources

PRETRAIN_PLOTS = ('loss', 'repr_loss', 'classif_loss', 'top1_accuracy',
                  'learning_rate', 'tau')
LINEAR_EVAL_PLOTS = ('loss', 'top1_accuracy', 'learning_rate')
PROBE_PLOTS = ('valid_top1', 'train_loss', 'log10_l2')
PROTOCOLS = ('augmented', 'precomputed')
AXIS_NAME = byol.AXIS_NAME


def dataset_kwargs(dataset_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Arguments that locate the data, shared by every pipeline call."""
  return dict(data_dir=dataset_config.data_dir or None,
              fashion_mnist_dir=dataset_config.fashion_mnist_dir)


def process_kwargs() -> dict[str, int]:
  """Which devices and which shard of the data this process owns."""
  return dict(num_local_devices=jax.local_device_count(),
              process_index=jax.process_index(),
              process_count=jax.process_count())


def run_length(config: ml_collections.ConfigDict, num_train_examples: int,
               warmup_epochs: float = 0.0) -> byol.Schedules:
  """Steps of the whole run and of the warm-up, from epochs or max_steps.

  Raises ValueError, naming the flag to fix, when the run would train
  nothing (max_steps < 0, or max_steps 0 with num_epochs giving 0 steps).
  """
  training = config.training
  batch = training.global_batch_size
  steps_per_epoch = num_train_examples / batch
  if training.max_steps < 0:
    raise ValueError(f'training.max_steps={training.max_steps}; set '
                     '--config.training.max_steps to a positive step count, '
                     'or to 0 to train for training.num_epochs')
  total = training.max_steps or math.ceil(
      training.num_epochs * steps_per_epoch)
  if total <= 0:
    raise ValueError(f'training.num_epochs={training.num_epochs} gives no '
                     'training step; set --config.training.num_epochs above '
                     '0 (or --config.training.max_steps)')
  warmup = min(round(warmup_epochs * steps_per_epoch), total)
  return byol.Schedules(global_batch_size=batch, warmup_steps=warmup,
                        total_steps=total)


def check_image_size(dataset_config: ml_collections.ConfigDict) -> None:
  """One-line ValueError for an image size that no network can take."""
  if dataset_config.image_size < 1:
    raise ValueError(f'dataset.image_size={dataset_config.image_size}; set '
                     '--config.dataset.image_size to a positive side in '
                     'pixels, e.g. 224')


def canonicalise_image_folder(dataset_config: ml_collections.ConfigDict):
  """Spells an image folder's data_dir one way (part of a run's identity)."""
  if dataset_config.name == image_folder.NAME and dataset_config.data_dir:
    dataset_config.data_dir = image_folder.canonical_root(
        dataset_config.data_dir)


def warn_if_other_data(config: ml_collections.ConfigDict,
                       restored: dict[str, Any]) -> None:
  """Warns when a resumed pretraining continues on other data than before.

  Allowed (it is how one continues training on new data), but rarely meant.
  `restored`: the metadata of the checkpoint resumed from ({} for none).
  """
  if not restored:
    return
  fields = _identity_fields(config, ('dataset.name', 'dataset.train_split'))
  changed = [f'{field} {old!r} -> {new!r}' for field, old, new
             in _changed_fields(restored.get('config', {}), config, fields)]
  if changed:
    _warn('warning: resuming a pretraining on other data '
          f'({"; ".join(changed)}); to start afresh from its weights, use a '
          'new --workdir with --config.init_from')


def _warn(warning: str) -> None:
  """Prints a `warning: ...` line on stderr, like errors (process 0 only)."""
  if jax.process_index() == 0:
    print(warning, file=sys.stderr, flush=True)


def _counted(number: int, noun: str) -> str:
  """'1 device', '4 devices': a count with its noun in the right number."""
  return f'{number} {noun}' + ('' if number == 1 else 's')


def check_finite(step: int, scalars: dict[str, float]) -> None:
  """Stops the run with a clear message when a metric is NaN or infinite."""
  bad = [name for name, value in scalars.items() if not math.isfinite(value)]
  if bad:
    raise FloatingPointError(
        f'{", ".join(bad)} became non-finite at step {step}; lower '
        '--config.optimizer.base_learning_rate and resume from the last '
        'checkpoint')


def write_json(path: str, value: Any) -> None:
  """Writes JSON via a temporary file and a rename: never half-written."""
  temp_path = f'{path}.tmp-{os.getpid()}'
  with gfile.GFile(temp_path, 'w') as f:
    json.dump(value, f, indent=2)
  gfile.rename(temp_path, path, overwrite=True)


def restore_latest(state: Any,
                   checkpoint_dir: str) -> tuple[Any, dict[str, Any]]:
  """`state` filled from the newest checkpoint in `checkpoint_dir`, if any.

  Returns it with that checkpoint's metadata ({} when there is none).
  Collective: every process restores, then all check that they restored
  the same step (see multihost.agree_on_step).
  """
  latest = checkpoint.latest_path(checkpoint_dir)
  metadata = {}
  if latest is not None:
    arrays, metadata = checkpoint.load_arrays(latest)
    logging.info('Resuming from %s', latest)
    state = checkpoint.restore_into(state, arrays, latest)
    saved, now = metadata.get('topology'), topology()
    if saved is not None and saved != now:
      # Each process's data shard and each device's batch depend on these,
      # so the run continues correctly but not bitwise as it would have.
      _warn(f'warning: checkpoint written on {saved}, resuming on {now}: '
            'the data order and batch statistics differ from an '
            'uninterrupted run from here on')
  multihost.agree_on_step(int(state.step))
  return state, metadata


def topology() -> dict[str, int]:
  """Processes and devices of this run, stored with each checkpoint."""
  return dict(processes=jax.process_count(), devices=jax.device_count())


def warm_start(state: byol.TrainState, path: str,
               with_opt_state: bool) -> byol.TrainState:
  """`state` with online/target params and BatchNorm state from `path`.

  `path` is a byol_jax `.npz` or a reference `.pkl`; the step, rng and (unless
  `with_opt_state`) the LARS momentum stay as initialised, so the run starts
  its schedules at step 0.

  Raises:
    checkpoint.CheckpointError: naming the first parameter that is missing or
      differs in shape (both shapes given); also a linear evaluation's
      checkpoint.
  """
  arrays, _ = reference_checkpoint.load_pretraining(path)
  fields = ['online_params', 'online_state', 'target_params', 'target_state']
  if with_opt_state:
    fields.append('opt_state')
  return state._replace(**{
      field: checkpoint.restore_into(getattr(state, field), arrays, path,
                                     prefix=field)
      for field in fields})


def run_steps(step_fn: Callable, state: Any, batches: Iterator, *,
              config: ml_collections.ConfigDict, workdir: str,
              total_steps: int, images_per_step: int,
              metadata: dict[str, Any]) -> tuple[Any, dict[str, float]]:
  """Applies `step_fn` until `total_steps`, logging and checkpointing.

  On SIGTERM or SIGINT the loop finishes the current step, saves a
  checkpoint and raises `preemption.Preempted`. With several processes the
  signal is shared every `checkpointing.stop_check_every_steps` steps (a
  small collective), so that all of them stop after the same step.

  Args:
    step_fn: pmapped `(state, batch) -> (state, metrics)`, state donated.
    state: replicated state whose `step` field says where to start.
    batches: device batches, starting at that step.
    config: the run's config (`logging`, `checkpointing` sections).
    workdir: where metrics and checkpoints go.
    total_steps: the step to stop at.
    images_per_step: global batch size, for the images/s report.
    metadata: stored in each checkpoint beside the arrays.

  Returns:
    The final replicated state and the last logged metrics.
  """
  is_chief = jax.process_index() == 0
  start_step = int(parallel.first_replica(state.step))
  writer = metric_writer.MetricWriter(workdir, enabled=is_chief)
  meter = progress.Progress(total_steps, images_per_step, start_step)
  saver = checkpoint.BackgroundSaver(os.path.join(workdir, 'checkpoints'),
                                     keep=config.checkpointing.keep)
  stop_check_every = (1 if jax.process_count() == 1 else
                      config.checkpointing.stop_check_every_steps)
  last_save_time = time.monotonic()
  scalars = {}
  with preemption.StopSignal() as stop:
    try:
      for done in range(start_step + 1, total_steps + 1):
        state, metrics = step_fn(state, next(batches))
        if done == start_step + 1:
          # pmap compiled in that call (its run may still be in flight).
          meter.first_step_done(done)
        is_last = done == total_steps
        if done % config.logging.log_every_steps == 0 or is_last:
          scalars = {k: float(v) for k, v in
                     parallel.first_replica(metrics).items()}
          check_finite(done, scalars)
          writer.write(done, scalars)
          if is_chief:
            print(meter.report(done, f'loss {scalars["loss"]:.4f} | top1 '
                                     f'{scalars["top1_accuracy"]:.3f}'),
                  flush=True)
        stopping = (not is_last and done % stop_check_every == 0 and
                    multihost.any_process(stop.requested))
        if (stopping or is_last or
            done % config.checkpointing.every_steps == 0 or
            time.monotonic() - last_save_time >
            config.checkpointing.every_secs):
          if is_chief:
            saver.save(done, parallel.first_replica(state), metadata)
          last_save_time = time.monotonic()
        if stopping:
          # No process may exit (and a scheduler end the job) before
          # process 0's checkpoint is on disk.
          saver.wait()
          multihost.barrier(f'preempted at step {done}')
          raise preemption.Preempted(done, stop.received or 'another host')
    finally:
      saver.wait()
      writer.close()
  return state, scalars


def finish(workdir: str, results: dict[str, Any], plots: tuple[str, ...]):
  """Writes results.json and metrics.png (process 0 only)."""
  if jax.process_index() != 0:
    return
  gfile.makedirs(workdir)  # a run of no steps has not made it yet
  jsonl = os.path.join(workdir, 'metrics.jsonl')
  if gfile.exists(jsonl):
    metric_writer.plot_metrics(jsonl, os.path.join(workdir, 'metrics.png'),
                               plots)
  write_json(os.path.join(workdir, 'results.json'), results)


def completed_results(workdir: str, step: int, total_steps: int):
  """The saved results of a run that already reached its last step, or None."""
  path = os.path.join(workdir, 'results.json')
  if step < total_steps or not gfile.exists(path):
    return None
  with gfile.GFile(path) as f:
    return json.load(f)


def pretrain_banner(config: ml_collections.ConfigDict, num_train: int,
                    schedules: byol.Schedules, num_devices: int,
                    start_step: int) -> str:
  """The line a pretraining starts with: data, steps, batch and devices."""
  return (f'pretraining on {config.dataset.name}: {num_train} images, '
          f'{_counted(schedules.total_steps, "step")} of '
          f'{schedules.global_batch_size} on {_counted(num_devices, "device")}'
          + (f', resuming at step {start_step}' if start_step else ''))


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) BYOL pretraining; returns the final metrics."""
  parallel.check_batch_divisible(config.training.global_batch_size)
  check_image_size(config.dataset)
  canonicalise_image_folder(config.dataset)
  data = dataset_kwargs(config.dataset)
  split = config.dataset.train_split
  num_train = sources.num_examples(config.dataset.name, split, **data)
  num_classes = sources.dataset_spec(config.dataset.name, **data).num_classes
  schedules = run_length(config, num_train, config.optimizer.warmup_epochs)
  size = config.dataset.image_size

  state = byol.init_state(config, num_classes, (size, size, 3))
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  if config.init_from and checkpoint.latest_path(checkpoint_dir) is None:
    # Only a fresh run warm-starts; a resumed one continues its own weights.
    source = resolve_checkpoint(config.init_from, flag='init_from')
    state = warm_start(state, source, config.init_from_opt_state)
    if jax.process_index() == 0:
      print(f'warm start from {source}', flush=True)
  state, restored = restore_latest(state, checkpoint_dir)
  warn_if_other_data(config, restored)
  start_step = int(state.step)
  done = completed_results(workdir, start_step, schedules.total_steps)
  if done is not None:
    print(f'pretraining already complete at step {start_step}', flush=True)
    return done
  if jax.process_index() == 0:
    print(pretrain_banner(config, num_train, schedules, jax.device_count(),
                          start_step), flush=True)

  batches = device_feed.prefetch_to_devices(pipelines.pretrain_batches(
      config.dataset.name, split=split, **data, **process_kwargs(),
      global_batch_size=schedules.global_batch_size, image_size=size,
      seed=config.seed, start_step=start_step,
      crop_area=(config.dataset.crop_area_min, config.dataset.crop_area_max),
      crop_aspect=(config.dataset.crop_aspect_min,
                   config.dataset.crop_aspect_max)))
  update = jax.pmap(byol.make_update_fn(config, num_classes, schedules),
                    axis_name=byol.AXIS_NAME, donate_argnums=0)
  _, scalars = run_steps(
      update, parallel.replicate(state), batches, config=config,
      workdir=workdir, total_steps=schedules.total_steps,
      images_per_step=schedules.global_batch_size,
      metadata=dict(kind='byol_pretrain', config=config.to_dict(),
                    topology=topology()))
  results = dict(step=schedules.total_steps, **scalars)
  finish(workdir, results, PRETRAIN_PLOTS)
  return results


def resolve_checkpoint(path: str, flag: str = 'checkpoint') -> str:
  """A checkpoint file from a file path, a run's workdir or its checkpoints/.

  `flag` names the config field in the error message.
  """
  for folder in (path, os.path.join(path, 'checkpoints')):
    if gfile.isdir(folder) and (latest := checkpoint.latest_path(folder)):
      return latest
  if gfile.exists(path) and not gfile.isdir(path):
    return path
  raise checkpoint.CheckpointError(
      f'no checkpoint at {path!r}; pass --config.{flag}=<pretraining '
      'workdir, checkpoint_*.npz or reference .pkl file>'
      + (', or --config.encoder_init=random' if flag == 'checkpoint' else ''))


# What embeddings depend on, besides the encoder; and what a linear
# evaluation's results depend on. An image folder's images are also named by
# its data_dir (a TFDS dataset is the same wherever its data_dir is).
_EMBEDDING_FIELDS = ('dataset.name', 'dataset.image_size',
                     'dataset.eval_crop_fraction')
_EVALUATION_FIELDS = ('protocol', 'finetune') + _EMBEDDING_FIELDS


def _identity_fields(config: ml_collections.ConfigDict,
                     fields: tuple[str, ...]) -> tuple[str, ...]:
  """`fields`, plus dataset.data_dir when the dataset is an image folder."""
  if config.dataset.name == image_folder.NAME:
    return fields + ('dataset.data_dir',)
  return fields


def _field(tree: dict[str, Any], field: str) -> Any:
  """tree['a']['b'] for field 'a.b'; None where a level is missing."""
  for name in field.split('.'):
    tree = tree.get(name) if isinstance(tree, dict) else None
  return tree


def _changed_fields(saved: dict[str, Any], config: ml_collections.ConfigDict,
                    fields: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
  """(field, saved value, value now) of each of `fields` that differs.

  `saved`: a checkpoint's config, as a dict; a field it lacks (an older
  checkpoint) counts as None.
  """
  now = config.to_dict()
  return [(field, _field(saved, field), _field(now, field))
          for field in fields if _field(saved, field) != _field(now, field)]


def embed_split(embed_step: Callable, replicated_state: Any,
                config: ml_collections.ConfigDict, split: str, source: str,
                workdir: str,
                stop_if_asked: Callable[[], None]) -> feature_probe.Features:
  """This process's embeddings of `split` (centre crop, no augmentation).

  Kept in `<workdir>/features/<split>_process<k>.npz` (written atomically),
  so a restarted run reuses them when they come from the same encoder,
  dataset, image size and crop (and for an image folder, the same images);
  otherwise they are computed again.
  `stop_if_asked()` runs after every batch (it raises on SIGTERM/SIGINT).
  """
  path = os.path.join(workdir, 'features',
                      f'{split}_process{jax.process_index()}.npz')
  settings = config.to_dict()
  made_by = dict(encoder=source, **{
      field: _field(settings, field)
      for field in _identity_fields(config, _EMBEDDING_FIELDS)})
  files = sources.split_fingerprint(
      config.dataset.name, split, config.dataset.data_dir or None,
      process_index=jax.process_index(), process_count=jax.process_count())
  if files is not None:  # an image folder: which images, as listed now
    made_by['files'] = files
  if gfile.exists(path):
    try:
      arrays, metadata = checkpoint.load_arrays(path)
      if all(metadata.get(k) == v for k, v in made_by.items()):
        return feature_probe.Features(**arrays)
      print(f'{path} was embedded with other settings; embedding {split} '
            'again', flush=True)
    except checkpoint.CheckpointError:
      print(f'{path} is damaged; embedding {split} again', flush=True)
  data = dataset_kwargs(config.dataset)
  batch_size = config.eval.global_batch_size
  num_batches = pipelines.num_eval_batches(
      sources.num_examples(config.dataset.name, split, **data), batch_size,
      jax.process_count())
  batches = device_feed.prefetch_to_devices(pipelines.eval_batches(
      config.dataset.name, split, **data, **process_kwargs(),
      global_batch_size=batch_size, image_size=config.dataset.image_size,
      crop_fraction=config.dataset.eval_crop_fraction))
  meter = progress.Progress(num_batches, batch_size, 0)
  parts = {name: [] for name in feature_probe.Features._fields}
  for done, batch in enumerate(batches, start=1):
    parts['features'].append(np.asarray(embed_step(
        replicated_state.params, replicated_state.state, batch['images'])))
    parts['labels'].append(np.asarray(batch['labels']))
    parts['mask'].append(np.asarray(batch['mask']))
    if done == 1:
      meter.first_step_done(done)
    if jax.process_index() == 0 and (
        done % config.logging.log_every_steps == 0 or done == num_batches):
      print(meter.report(done, f'embedding {split}'), flush=True)
    stop_if_asked()
  features = feature_probe.Features(
      **{name: np.concatenate(values, axis=1)
         for name, values in parts.items()})
  gfile.makedirs(os.path.dirname(path))
  checkpoint.write(path, features._asdict(), made_by)
  return features


def check_splits_exist(dataset_config: ml_collections.ConfigDict,
                       training_splits: tuple[str, ...]) -> None:
  """DatasetError, before any work, for a split that is missing or empty.

  Checks `training_splits` and the evaluation split (dataset.eval_split).
  """
  for split in (*training_splits, dataset_config.eval_split):
    count = sources.num_examples(dataset_config.name, split,
                                 **dataset_kwargs(dataset_config))
    if not count:
      held_out = (" ('valid' holds out a tenth of the training images: at "
                  "least 10 are needed)" if split == 'valid' else '')
      raise errors.DatasetError(
          f'split {split!r} of {dataset_config.name} has no examples'
          f'{held_out}; add images or use a larger dataset')


def check_probe_config(probe: ml_collections.ConfigDict) -> None:
  """One-line ValueError for an ℓ2 grid or L-BFGS length that cannot work."""
  if not (math.isfinite(probe.l2_min) and math.isfinite(probe.l2_max) and
          0 < probe.l2_min <= probe.l2_max and probe.num_l2 >= 1):
    raise ValueError(
        f'probe grid l2_min={probe.l2_min}, l2_max={probe.l2_max}, '
        f'num_l2={probe.num_l2}; need finite 0 < --config.probe.l2_min <= '
        '--config.probe.l2_max and --config.probe.num_l2 >= 1')
  if probe.lbfgs_iterations < 1:
    raise ValueError(f'probe.lbfgs_iterations={probe.lbfgs_iterations}; set '
                     '--config.probe.lbfgs_iterations to 1 or more')


def fit_probe(config: ml_collections.ConfigDict, train: feature_probe.Features,
              valid: feature_probe.Features, num_classes: int,
              workdir: str, stop_if_asked: Callable[[], None]
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Chooses λ on `valid`, refits on train + valid; see feature_probe.py.

  Returns the `classifier` params for raw embeddings and the metrics of the
  chosen fit (`l2`, `valid_top1`, `train_loss`, `train_top1`). Each λ of the
  grid is logged as one step of metrics.jsonl.
  """
  probe = config.probe
  grid = np.geomspace(probe.l2_max, probe.l2_min, probe.num_l2)
  moments_fn = jax.pmap(feature_probe.feature_moments, axis_name=AXIS_NAME)
  fit = jax.pmap(feature_probe.make_fit_fn(probe.lbfgs_iterations),
                 axis_name=AXIS_NAME)
  count = jax.pmap(feature_probe.make_count_fn(), axis_name=AXIS_NAME)

  def accuracy(w, b, split, moments):
    counts = parallel.first_replica(count(w, b, *split, moments))
    return counts['top1'] / counts['count']

  def fit_on(split, moments, w, b, l2):
    w, b, loss = fit(w, b, *split, moments, parallel.replicate(
        np.float32(l2)))
    return w, b, float(parallel.first_replica(loss))

  w = parallel.replicate(np.zeros((train.features.shape[-1], num_classes),
                                  np.float32))
  b = parallel.replicate(np.zeros((num_classes,), np.float32))
  writer = metric_writer.MetricWriter(workdir,
                                      enabled=jax.process_index() == 0)
  meter = progress.Progress(len(grid), 0, 0)
  best = None
  valid_top1s = []  # one per l2 of the grid
  moments = moments_fn(train.features, train.mask)
  try:
    for index, l2 in enumerate(grid, start=1):
      w, b, loss = fit_on(train, moments, w, b, l2)
      valid_top1 = accuracy(w, b, valid, moments)
      if index == 1:
        meter.first_step_done(index)
      valid_top1s.append(valid_top1)
      metrics = dict(l2=float(l2), log10_l2=float(np.log10(l2)),
                     train_loss=loss, valid_top1=valid_top1)
      writer.write(index, metrics)
      if best is None or valid_top1 > best[0]['valid_top1']:
        best = (metrics, w, b)
      if jax.process_index() == 0:
        print(meter.report(index, f'l2 {l2:.2e} | train loss {loss:.4f} | '
                                  f'valid top-1 {valid_top1:.4f}'),
              flush=True)
      stop_if_asked()
  finally:
    writer.close()
  metrics, w, b = best
  warning = grid_edge_warning(grid, valid_top1s)
  if warning:
    _warn(warning)
  both = feature_probe.Features(*(
      np.concatenate([a, c], axis=1) for a, c in zip(train, valid)))
  moments = moments_fn(both.features, both.mask)
  w, b, loss = fit_on(both, moments, w, b, metrics['l2'])
  classifier = feature_probe.fold_standardisation(
      *parallel.first_replica((w, b, moments)))
  return classifier, dict(l2=metrics['l2'], valid_top1=metrics['valid_top1'],
                          train_loss=loss,
                          train_top1=accuracy(w, b, both, moments))


def grid_edge_warning(grid: np.ndarray,
                      valid_top1s: list[float]) -> str | None:
  """A warning if the best l2 is at an end of the grid and beats its neighbour.

  The warning gives the overrides that extend the grid two values past that
  end; None if there is nothing to warn about.

  Args:
    grid: the l2 values, descending.
    valid_top1s: the valid top-1 of each (the first best one is chosen).
  """
  best = int(np.argmax(valid_top1s))
  if len(grid) < 2 or 0 < best < len(grid) - 1:
    return None
  inner = 1 if best == 0 else len(grid) - 2
  if valid_top1s[best] <= valid_top1s[inner]:
    return None  # a tie: nothing suggests that further values do better
  ratio, more = grid[0] / grid[1], f'--config.probe.num_l2={len(grid) + 2}'
  flags = (f'--config.probe.l2_max={grid[0] * ratio ** 2:.0e} {more}'
           if best == 0 else
           f'--config.probe.l2_min={grid[-1] / ratio ** 2:.0e} {more}')
  return (f'warning: the chosen l2 {grid[best]:.2e} is at the edge of the '
          f'grid (valid top-1 {valid_top1s[best]:.4f}, against '
          f'{valid_top1s[inner]:.4f} at {grid[inner]:.2e}); a wider grid may '
          f'do better, e.g. {flags}')


def check_same_evaluation(config: ml_collections.ConfigDict, encoder: str,
                          saved: dict[str, Any], workdir: str) -> None:
  """One-line ValueError if `workdir`'s checkpoint evaluates something else.

  A resumed (or finished) evaluation must have the same encoder, protocol,
  dataset and image size as this run, or its results would be reported
  under this run's name. `saved`: the restored checkpoint's metadata.
  """
  changed = [f'encoder {saved.get("encoder")} -> {encoder}'] if (
      saved.get('encoder') != encoder) else []
  changed += [f'{field} {old} -> {new}' for field, old, new in _changed_fields(
      saved.get('config', {}), config,
      _identity_fields(config, _EVALUATION_FIELDS))]
  if changed:
    raise ValueError(f'{workdir} holds another linear evaluation '
                     f'({"; ".join(changed)}); use another --workdir or '
                     'delete that one')


def linear_evaluation(config: ml_collections.ConfigDict,
                      workdir: str) -> dict[str, Any]:
  """Trains a linear classifier on a (frozen) encoder and tests it.

  `config.protocol` 'augmented': SGD on augmented training images (the
  reference's ImageNet protocol; also fine-tuning). 'precomputed': L-BFGS
  logistic regression on embeddings of unaugmented images, λ chosen on the
  'valid' split (the paper's transfer protocol, feature_probe.py); its one
  checkpoint is step 1.

  Returns top1/top5 over every example of the evaluation split and
  `num_examples`, also written to `<workdir>/results.json`.
  """
  if config.protocol not in PROTOCOLS:
    raise ValueError(f'protocol={config.protocol!r}; use '
                     '--config.protocol=augmented or precomputed')
  precomputed = config.protocol == 'precomputed'
  canonicalise_image_folder(config.dataset)
  if precomputed and config.finetune:
    raise ValueError('fine-tuning trains on augmented images; use '
                     '--config.protocol=augmented with --config.finetune')
  if precomputed:
    check_probe_config(config.probe)
  else:
    parallel.check_batch_divisible(config.training.global_batch_size)
  parallel.check_batch_divisible(config.eval.global_batch_size,
                                 flag='eval.global_batch_size')
  check_image_size(config.dataset)
  data = dataset_kwargs(config.dataset)
  check_splits_exist(config.dataset, ('train', 'valid') if precomputed else
                     (config.dataset.train_split,))
  num_train = sources.num_examples(config.dataset.name,
                                   config.dataset.train_split, **data)
  num_classes = sources.dataset_spec(config.dataset.name, **data).num_classes
  total_steps = 1 if precomputed else run_length(config, num_train).total_steps
  source = None
  if config.encoder_init == 'checkpoint':
    source = resolve_checkpoint(config.checkpoint)
  elif config.encoder_init != 'random':
    raise ValueError(f'encoder_init={config.encoder_init!r}; use '
                     '--config.encoder_init=checkpoint or random')

  state = linear_eval.init_state(config, num_classes)
  if source:
    state = linear_eval.load_pretrained_encoder(state, source)
  state, restored = restore_latest(state, os.path.join(workdir, 'checkpoints'))
  start_step = int(state.step)
  if start_step:
    check_same_evaluation(config, source or 'random', restored, workdir)
  done = completed_results(workdir, start_step, total_steps)
  if done is not None:
    print(f'linear evaluation already complete: top-1 {done["top1"]:.4f}, '
          f'top-5 {done["top5"]:.4f}', flush=True)
    return done
  if jax.process_index() == 0:
    what = ('logistic regression on precomputed features' if precomputed
            else f'{_counted(total_steps, "step")} of '
                 f'{config.training.global_batch_size}')
    print(f'linear evaluation of {source or "a random encoder"} on '
          f'{config.dataset.name}: {what}'
          + (f', resuming at step {start_step}' if start_step else ''),
          flush=True)
  metadata = dict(kind='linear_eval', config=config.to_dict(),
                  topology=topology(), encoder=source or 'random')
  if precomputed:
    state, scalars = _train_probe(config, state, num_classes, workdir,
                                  metadata, restored)
  else:
    state, scalars = _train_linear(config, state, num_classes, total_steps,
                                   workdir, metadata)

  eval_step = jax.pmap(linear_eval.make_eval_step(config, num_classes),
                       axis_name=linear_eval.AXIS_NAME)
  test = linear_eval.evaluate(eval_step, state, device_feed.prefetch_to_devices(
      pipelines.eval_batches(
          config.dataset.name, config.dataset.eval_split, **data,
          **process_kwargs(), global_batch_size=config.eval.global_batch_size,
          image_size=config.dataset.image_size,
          crop_fraction=config.dataset.eval_crop_fraction)))
  results = dict(test, split=config.dataset.eval_split,
                 encoder=source or 'random', protocol=config.protocol,
                 step=total_steps, train_loss=scalars.get('loss'),
                 train_top1=scalars.get('top1_accuracy'))
  if precomputed:
    results.update(l2=scalars.get('l2'), valid_top1=scalars.get('valid_top1'))
  if jax.process_index() == 0:
    print(f'{config.dataset.eval_split}: top-1 {test["top1"]:.4f}, top-5 '
          f'{test["top5"]:.4f} over {test["num_examples"]} images', flush=True)
  finish(workdir, results, PROBE_PLOTS if precomputed else LINEAR_EVAL_PLOTS)
  return results


def _train_linear(config, state, num_classes, total_steps, workdir, metadata):
  """The augmented protocol: SGD steps; returns (replicated state, metrics)."""
  batches = device_feed.prefetch_to_devices(pipelines.linear_train_batches(
      config.dataset.name, split=config.dataset.train_split,
      **dataset_kwargs(config.dataset), **process_kwargs(),
      global_batch_size=config.training.global_batch_size,
      image_size=config.dataset.image_size, seed=config.seed,
      start_step=int(state.step),
      crop_area=(config.dataset.crop_area_min, config.dataset.crop_area_max),
      crop_aspect=(config.dataset.crop_aspect_min,
                   config.dataset.crop_aspect_max)))
  train_step = jax.pmap(
      linear_eval.make_train_step(config, num_classes, total_steps),
      axis_name=linear_eval.AXIS_NAME, donate_argnums=0)
  return run_steps(
      train_step, parallel.replicate(state), batches, config=config,
      workdir=workdir, total_steps=total_steps,
      images_per_step=config.training.global_batch_size, metadata=metadata)


def _train_probe(config, state, num_classes, workdir, metadata, restored):
  """The precomputed protocol; returns (replicated state, metrics).

  A state already at step 1 (killed after its checkpoint) is only tested;
  the fit's metrics come back from that checkpoint's metadata, `restored`.
  """
  if int(state.step) >= 1:
    return parallel.replicate(state), _probe_metrics(restored['probe'])
  replicated = parallel.replicate(state)
  embed_step = jax.pmap(feature_probe.make_embed_fn(config.model),
                        axis_name=AXIS_NAME)
  encoder = metadata['encoder']
  embedded = {}  # split -> its features, saved in the workdir's cache
  with preemption.StopSignal() as stop:

    def stop_if_asked():
      # Embeddings of finished splits are on disk; the rest is recomputed.
      if multihost.any_process(stop.requested):
        multihost.barrier('linear probe stopped')
        kept = (f'keeping the {" and ".join(embedded)} embeddings'
                if embedded else 'before any split was embedded')
        raise preemption.Preempted(
            0, stop.received or 'another host',
            saved=f'during the linear probe, {kept}')

    for split in ('train', 'valid'):
      embedded[split] = embed_split(embed_step, replicated, config, split,
                                    encoder, workdir, stop_if_asked)
    train, valid = embedded['train'], embedded['valid']
    classifier, scalars = fit_probe(config, train, valid, num_classes,
                                    workdir, stop_if_asked)
  params = dict(state.params)
  params['classifier'] = classifier
  state = state._replace(step=np.ones((), np.int32), params=params)
  if jax.process_index() == 0:
    checkpoint.save(os.path.join(workdir, 'checkpoints'), 1, state,
                    dict(metadata, probe=scalars),
                    keep=config.checkpointing.keep)
    print(f'chosen l2 {scalars["l2"]:.2e}: valid top-1 '
          f'{scalars["valid_top1"]:.4f}, train top-1 '
          f'{scalars["train_top1"]:.4f}', flush=True)
  multihost.barrier('linear probe checkpoint')
  return parallel.replicate(state), _probe_metrics(scalars)


def _probe_metrics(scalars):
  """fit_probe's metrics, plus the names that linear_evaluation reports."""
  return dict(scalars, loss=scalars['train_loss'],
              top1_accuracy=scalars['train_top1'])
