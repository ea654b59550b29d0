"""What the training entry points share: --workdir, --config, platform
set-up, and running a job with one-line errors."""

import os
import sys
from typing import Any, Callable

from absl import flags
from absl import logging

from experiments import cli
# Re-exported: the entry points pass `entry.parse_flags` to `app.run`.
from experiments.cli import parse_flags  # pylint: disable=unused-import
from experiments.cli import user_errors

WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for checkpoints, metrics and results. Re-running '
    'the same command resumes from its latest checkpoint.', required=True)


def config_path(name: str) -> str:
  """Absolute path of `experiments/configs/<name>`, so defaults work anywhere."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                      name)


def define_config(default: str, help_string: str):
  """`--config` (a config file with `:preset`) and its `--config.*` overrides.

  Without `--config` on the command line, ml_collections applies the
  overrides to `default` while the flag is being defined; a bad override
  then fails here, and gets the same one-line error as in `parse_flags`.
  Typos fail instead of adding keys (`lock_config=True`).
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_file('config', default, help_string,
                                           lock_config=True)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    cli.exit_with(e, sys.argv)


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
