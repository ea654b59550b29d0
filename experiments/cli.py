"""Command-line plumbing of every entry point: flag parsing and user errors
as one line with exit status 2."""

import re
import sys

from absl import flags

# The errors a user can fix: each prints as one line and exits non-zero.
_USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def exit_with(error: Exception, argv: list[str]):
  """Prints `error` as one `error:` line and exits with status 2."""
  print(f'error: {_one_line(error, argv)}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad flag or config key as one line.

  Pass as `app.run(main, flags_parser=cli.parse_flags)`. Unknown config
  keys, values of the wrong type and unknown presets exit with status 2
  before any work starts.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    exit_with(e, argv)


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
