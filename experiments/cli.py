"""Command-line plumbing of every entry point: flag parsing and user errors
as one line with exit status 2."""

import os
import re
import sys

from absl import flags

# The errors a user can fix: each prints as one line and exits non-zero.
_USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
# What absl and ml_collections raise for a bad flag, preset or config key.
# (OSError: a config file that does not exist or cannot be read.)
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError,
                OSError)
# What a config override of each type that fails to parse is told to be.
_EXPECTED = {'int': 'an int', 'float': 'a float', 'bool': 'true or false'}
# absl's flags that print help and exit.
_HELP_FLAGS = {'help', '?', 'helpshort', 'helpfull', 'helpxml'}


def exit_with(error: Exception, argv: list[str]):
  """Prints `error` as one `error:` line and exits with status 2."""
  print(f'error: {_one_line(error, argv)}', file=sys.stderr, flush=True)
  sys.exit(2)


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
  except _FLAG_ERRORS as e:
    exit_with(e, sys.argv)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad flag or config key as one line.

  Pass as `app.run(main, flags_parser=cli.parse_flags)`. Unknown config
  keys, values of the wrong type and unknown presets exit with status 2
  before any work starts.
  """
  try:
    return flags.FLAGS(argv)
  except BrokenPipeError:
    # The help went to a reader that closed early (`--help | head`).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  except _FLAG_ERRORS as e:
    exit_with(e, argv)
  except SystemExit as e:
    # absl prints the help asked for, then exits 1; asking is no failure.
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)
    raise


def refuse_arguments(argv: list[str]) -> None:
  """Exits 2 with one line if absl left arguments that are not flags.

  `argv`: what absl passes to main. A forgotten `--` before an override
  would otherwise run without it.
  """
  if argv[1:]:
    print(f'error: unexpected argument {argv[1]!r}; every setting is a flag, '
          'e.g. --config.training.max_steps=3', file=sys.stderr, flush=True)
    sys.exit(2)


def _asks_for_help(argv: list[str]) -> bool:
  """Whether argv holds one of absl's help flags (--help, --helpfull, ...)."""
  names = {arg.lstrip('-').split('=')[0] for arg in argv[1:]
           if arg.startswith('-')}
  return bool(names & _HELP_FLAGS)


def _one_line(error: Exception, argv: list[str]) -> str:
  """Condenses a flag-parsing error into one line that says what to fix."""
  if isinstance(error, OSError):
    config = next((a.split('=', 1)[1].split(':')[0] for a in argv
                   if a.startswith('--config=')), 'the config file')
    return (f'cannot load {config}: no such readable config file; pass '
            '--config=experiments/configs/<file>.py:<preset>')
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
  wrong_type = _wrong_type(error, text)
  if wrong_type:
    return wrong_type
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(error, flags.UnrecognizedFlagError):
    return f'{lines[0]}; pass --help for the valid flags'
  if 'Traceback' not in text:
    return lines[0]
  # A config file that raised: its last traceback line is the message, after
  # the exception's type (`ValueError: unknown preset ...`).
  return re.sub(r'^[\w.]+: ', '', lines[-1])


def _wrong_type(error: Exception, text: str) -> str | None:
  """What to pass instead of a config override that does not parse, or None.

  `text` is the error's message, absl's `flag --config.a.b=VALUE: <why>`;
  the flag ml_collections defined for the override knows the field's type
  and the value the config file gave it.
  """
  if not isinstance(error, flags.IllegalFlagValueError):
    return None
  match = re.match(r'flag --(config\.[\w.]+)=(.*?): ', text)
  if not match or match.group(1) not in flags.FLAGS:
    return None
  name, value = match.groups()
  flag = flags.FLAGS[name]
  expected = _EXPECTED.get(flag.parser.flag_type())
  if expected is None:
    return None
  return (f"--{name}={value}: expected {expected} (the preset's value is "
          f'{flag.default}); pass e.g. --{name}={flag.default}')


def user_errors() -> tuple[type[Exception], ...]:
  """Exception types that mean bad input rather than a bug."""
  from byol_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from byol_jax.data import errors  # pylint: disable=g-import-not-at-top
  return _USER_ERRORS + (checkpoint.CheckpointError, errors.DatasetError)
