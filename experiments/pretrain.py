r"""BYOL pretraining.

  python -m experiments.pretrain --workdir=runs/demo/pretrain \
      --config=experiments/configs/byol.py:demo

Re-running the same command resumes from the workdir's latest checkpoint.
"""

from absl import app

from byol_jax import train_loop
from experiments import cli
from experiments import entry

_CONFIG = cli.define_config(cli.config_path('byol.py:demo'),
                            'Pretraining config.')


def main(argv):
  del argv
  entry.run(train_loop.pretrain, _CONFIG.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
