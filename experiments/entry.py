"""What both entry points share: flags, platform set-up, one-line errors."""

import os
import re
import sys
from typing import Any, Callable

from absl import flags
from absl import logging

# The errors a user can fix: each prints as one line and exits non-zero.
_USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)

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
    _exit_with(e, sys.argv)


def _exit_with(error: Exception, argv: list[str]):
  print(f'error: {_one_line(error, argv)}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad flag or config key as one line.

  Pass as `app.run(main, flags_parser=entry.parse_flags)`. Unknown config
  keys, values of the wrong type and unknown presets exit with status 2
  before any work starts.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    _exit_with(e, argv)


def _one_line(error: Exception, argv: list[str]) -> str:
  """Condenses a flag-parsing error into one line that says what to fix."""
  text = str(error).replace('\\n', '\n').replace("\\'", "'")
  unknown = re.match(r"""^["']*'?([\w.]+)'""", text)
  if isinstance(error, (AttributeError, KeyError)) and unknown:
    key = unknown.group(1)
    flag = next((a.split('=')[0] for a in argv
                 if a.startswith('--config.') and
                 f'.{key}.' in a.split('=')[0] + '.'), key)
    hint = re.search(r'Did you mean "([\w.]+)"', text)
    return (f'unknown config key in {flag}' +
            (f'; did you mean "{hint.group(1)}"?' if hint else
             '; see the config file for the valid keys'))
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  # A config file that raised: its last traceback line is the message.
  return lines[-1] if 'Traceback' in text else lines[0]


def user_errors() -> tuple[type[Exception], ...]:
  """Exception types that mean bad input rather than a bug."""
  from byol_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from byol_jax.data import errors  # pylint: disable=g-import-not-at-top
  return _USER_ERRORS + (checkpoint.CheckpointError, errors.DatasetError)


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
  """Runs `job(config, workdir)` on this host's share of the run.

  User errors become one line and exit 2; a run stopped by SIGTERM/SIGINT
  exits with `preemption.EXIT_CODE` (75) after its checkpoint is written.
  """
  from byol_jax import multihost  # pylint: disable=g-import-not-at-top
  from byol_jax import preemption  # pylint: disable=g-import-not-at-top
  hide_accelerators_from_tensorflow()
  if not flags.FLAGS['verbosity'].present:
    # TFDS logs every file it opens at INFO; the progress lines are printed.
    logging.set_verbosity(logging.WARNING)
  try:
    # Before anything touches a JAX backend (the compilation cache does not).
    multihost.initialize(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value,
                         PROCESS_ID.value)
    enable_compilation_cache()
    job(config, WORKDIR.value)
  except user_errors() as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
