r"""Converts one of DeepMind's BYOL checkpoints (`.pkl`) to a byol_jax `.npz`.

  python -m experiments.convert_reference \
      --input=pretrain_res50x1.pkl --output=res50x1.npz

The pickle is read without running code from it (see
`byol_jax/reference_checkpoint.py`). The `.npz` holds the online and target
params and BatchNorm state and the LARS momentum under byol_jax's keys, plus
JSON metadata; `--config.checkpoint=` of linear_eval and `--config.init_from=`
of pretrain accept it (and the `.pkl` itself). Prints one summary line; bad
input ends with one `error:` line and exit status 2.
"""

import sys

from absl import app
from absl import flags

from experiments import cli

_INPUT = flags.DEFINE_string('input', None, 'Reference checkpoint (.pkl).',
                             required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'byol_jax checkpoint to write '
                              '(.npz).', required=True)


def convert(input_path: str, output_path: str) -> str:
  """Writes the converted checkpoint; returns a one-line summary."""
  # Imported here so that flag errors come before TensorFlow/JAX start up.
  from byol_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from byol_jax import reference_checkpoint  # pylint: disable=g-import-not-at-top
  if not output_path.endswith('.npz'):
    raise ValueError(f'--output={output_path} must end in .npz')
  arrays, metadata = reference_checkpoint.load_arrays(input_path)
  checkpoint.write(output_path, arrays, metadata)
  params = sum(a.size for k, a in arrays.items()
               if k.startswith('online_params/'))
  encoder = metadata.get('encoder', 'unknown encoder')
  width = metadata.get('width_multiplier')
  return (f'converted {input_path} (reference step '
          f'{metadata["reference_step"]}, {encoder}'
          + (f' width {width:g}x' if width else '') +
          f', {params:,} online parameters, {len(arrays)} arrays) -> '
          f'{output_path}')


def main(argv):
  del argv
  try:
    print(convert(_INPUT.value, _OUTPUT.value), flush=True)
  except cli.user_errors() as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
