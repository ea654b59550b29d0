r"""BYOL pretraining.

  python -m experiments.pretrain --workdir=runs/demo/pretrain \
      --config=experiments/configs/byol.py:demo

Re-running the same command resumes from the workdir's latest checkpoint.
Exit status: 0 finished, 2 bad input (one line on stderr), 75 stopped by
SIGTERM/SIGINT after writing a checkpoint (run it again to resume). Several
hosts: see launch/ (or pass --coordinator_address, --num_processes and
--process_id to every process).
"""

from absl import app
from absl import flags

from byol_jax import train_loop
from experiments import cli
from experiments import entry

_CONFIG = cli.define_config(cli.config_path('byol.py:demo'),
                            'Pretraining config, file.py:preset; set any '
                            'field with --config.a.b=value.')

# --help lists the flags of these modules too (--config, --workdir, hosts).
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(entry)


def main(argv):
  entry.run(train_loop.pretrain, _CONFIG.value, argv)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
