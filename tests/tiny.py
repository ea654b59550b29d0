"""Tiny configs shared by the tests: a narrow ResNet-18 on 16-px images."""

from experiments.configs import byol as byol_configs
from experiments.configs import linear_eval as linear_eval_configs


def _shrink(config):
  config.model.encoder.update(depth=18, width_multiplier=0.125,
                              small_image_stem=True)
  config.dataset.image_size = 16
  return config


def pretrain_config():
  config = _shrink(byol_configs.get_config('demo'))
  config.model.update(projector_hidden_size=32, predictor_hidden_size=32,
                      projector_output_size=16)
  config.training.global_batch_size = 16
  return config


def linear_eval_config():
  """The demo's linear evaluation with the augmented protocol."""
  config = _shrink(linear_eval_configs.get_config('demo'))
  config.protocol = 'augmented'
  config.training.global_batch_size = 16
  config.eval.global_batch_size = 12
  return config


def pretrain_flags(*, data_dir, fashion_mnist_dir, workdir,
                        total_steps, checkpoint_every=1000):
  """Entry-point flags of pretrain_config(): for runs in a subprocess."""
  return [
      f'--workdir={workdir}',
      '--config=experiments/configs/byol.py:demo',
      f'--config.dataset.data_dir={data_dir}',
      f'--config.dataset.fashion_mnist_dir={fashion_mnist_dir}',
      '--config.dataset.image_size=16',
      '--config.model.encoder.width_multiplier=0.125',
      '--config.model.encoder.small_image_stem=True',
      '--config.model.projector_hidden_size=32',
      '--config.model.predictor_hidden_size=32',
      '--config.model.projector_output_size=16',
      '--config.training.global_batch_size=16',
      f'--config.training.max_steps={total_steps}',
      f'--config.checkpointing.every_steps={checkpoint_every}',
      '--config.logging.log_every_steps=1',
  ]
