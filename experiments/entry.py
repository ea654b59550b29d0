"""What the training entry points share: --workdir, platform set-up, and
running a job with one-line errors."""

import os
import re
import sys
import tempfile
from typing import Any, Callable

from absl import flags
from absl import logging

from experiments import cli
from experiments.cli import user_errors

WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for checkpoints, metrics and results. Re-running '
    'the same command resumes from its latest checkpoint. With several '
    'hosts: one folder they all share (gs://..., NFS).', required=True)

# Multi-host runs (one process per host). On SLURM and Cloud TPU VMs JAX
# finds these itself; elsewhere give all three, the same coordinator to all.
COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0, reachable from every host.')
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes (hosts) in the run.', lower_bound=1)
PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "This process's index, 0 .. num_processes - 1.",
    lower_bound=0)


def hide_accelerators_from_tensorflow() -> None:
  """Keeps TensorFlow (host input pipeline only) off GPUs and TPUs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')


def enable_compilation_cache() -> None:
  """Caches compiled steps on disk, so a resumed run starts without compiling.

  Honours JAX_COMPILATION_CACHE_DIR; defaults to ~/.cache/byol_jax/xla.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.expanduser('~/.cache/byol_jax/xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def workdir_problem(workdir: str, gfile) -> str | None:
  """Why `workdir` cannot hold a run's files, or None; creates nothing.

  A workdir that exists must be a folder. On a local path, the nearest
  existing ancestor of a workdir still to be created must be a folder that
  takes a new folder (tried with an empty one, removed at once); remote
  paths such as gs:// are left to their first write.
  """
  if gfile.exists(workdir):
    return None if gfile.isdir(workdir) else 'is a file, not a folder'
  if '://' in workdir:
    return None
  ancestor = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    return f'cannot be created: {ancestor} is a file'
  try:  # what access() cannot tell: read-only mounts, /proc, ACLs
    os.rmdir(tempfile.mkdtemp(prefix='.byol_jax_write_check_', dir=ancestor))
  except OSError as e:
    return f'cannot be created in {ancestor} ({e.strerror})'
  return None


def run(job: Callable[[Any, str], Any], config: Any, argv: list[str]) -> None:
  """Runs `job(config, workdir)` on this host's share of the run.

  `argv` is what absl left after the flags: only the program's name. User
  errors become one line and exit 2; a run stopped by SIGTERM/SIGINT exits
  with `preemption.EXIT_CODE` (75) after its checkpoint is written.
  """
  cli.refuse_arguments(argv)
  from byol_jax import multihost  # pylint: disable=g-import-not-at-top
  from byol_jax import preemption  # pylint: disable=g-import-not-at-top
  hide_accelerators_from_tensorflow()
  if not flags.FLAGS['verbosity'].present:
    # TFDS logs every file it opens at INFO; the progress lines are printed.
    logging.set_verbosity(logging.WARNING)
  try:
    config.keys()  # ml_collections defers a config file's load error to here
  except OSError as e:
    cli.exit_with(e, sys.argv)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  workdir = WORKDIR.value
  problem = workdir_problem(workdir, tf.io.gfile)
  if problem:
    print(f'error: --workdir={workdir} {problem}; pass a new or existing '
          'folder you can write to', file=sys.stderr, flush=True)
    sys.exit(2)
  try:
    # Before anything touches a JAX backend (the compilation cache does not).
    multihost.initialize(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value,
                         PROCESS_ID.value)
    enable_compilation_cache()
    job(config, workdir)
  except user_errors() as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except tf.errors.DataLossError as e:
    # Raised while reading, from inside tf.data: a damaged prepared dataset.
    # TF wraps its own words in the op's names: `{{function_node ...}}
    # corrupted record at 2721 [Op:IteratorGetNext] name: `.
    reason = re.sub(r'\{\{.*?\}\}|\[Op:.*', '',
                    e.message.splitlines()[0]).strip()
    print(f'error: a prepared dataset file is corrupt ({reason}); delete that '
          'dataset\'s folder in the TFDS data_dir and prepare it again',
          file=sys.stderr, flush=True)
    sys.exit(2)
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
