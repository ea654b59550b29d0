"""What the training entry points share: --workdir, platform set-up, and
running a job with one-line errors."""

import os
import sys
from typing import Any, Callable

from absl import flags
from absl import logging

from experiments.cli import user_errors

WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for checkpoints, metrics and results. Re-running '
    'the same command resumes from its latest checkpoint.', required=True)


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


def run(job: Callable[[Any, str], Any], config: Any) -> None:
  """Runs `job(config, workdir)`; user errors become one line and exit 2."""
  hide_accelerators_from_tensorflow()
  enable_compilation_cache()
  if not flags.FLAGS['verbosity'].present:
    # TFDS logs every file it opens at INFO; the progress lines are printed.
    logging.set_verbosity(logging.WARNING)
  try:
    job(config, WORKDIR.value)
  except user_errors() as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
