r"""Linear evaluation (or fine-tuning) of a pretrained encoder.

  python -m experiments.linear_eval --workdir=runs/demo/linear_eval \
      --config=experiments/configs/linear_eval.py:demo \
      --config.checkpoint=runs/demo/pretrain

Prints and writes (results.json) top-1/top-5 over the whole test split.
Exit status and multi-host flags as experiments/pretrain.py.
"""

from absl import app
from absl import flags

from byol_jax import train_loop
from experiments import cli
from experiments import entry

_CONFIG = cli.define_config(cli.config_path('linear_eval.py:demo'),
                            'Linear evaluation config, file.py:preset; set '
                            'any field with --config.a.b=value.')

# --help lists the flags of these modules too (--config, --workdir, hosts).
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(entry)


def main(argv):
  entry.run(train_loop.linear_evaluation, _CONFIG.value, argv)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
