"""BYOL pretraining configs.

Presets (pass after the colon): `40ep`, `100ep`, `300ep`, `1000ep` for
ImageNet with the reference's hyper-parameters (ResNet-50 1x, batch 4096,
LARS, 10 warm-up epochs), and `demo` for Fashion-MNIST on a CPU.

  python -m experiments.pretrain --workdir=runs/byol_300ep \
      --config=experiments/configs/byol.py:300ep \
      --config.optimizer.weight_decay=2e-6

Expected results (paper, Table / reference README): 1000ep ResNet-50 1x gives
74.3 % top-1 / 91.6 % top-5 under linear evaluation; 300ep about 72.5 %;
100ep about 66.5 %; 40ep about 61.5 % (online probe ≈ 62 %). A 1000-epoch run
takes about 8 h on 512 TPU v3 cores. `demo` runs in about 10 minutes on a
2-core CPU.
"""

import ml_collections

# ImageNet presets of the reference, keyed by pretraining epochs.
_IMAGENET_PRESETS = {
    #          base lr, weight decay, τ_base
    '40ep': (0.45, 1e-6, 0.97),
    '100ep': (0.45, 1e-6, 0.99),
    '300ep': (0.3, 1e-6, 0.99),
    '1000ep': (0.2, 1.5e-6, 0.996),
}


def view_config(blur_prob: float, solarize_prob: float):
  """The paper's augmentation parameters for one view (Table 6)."""
  return ml_collections.ConfigDict(dict(
      flip=True,
      color_jitter_prob=0.8,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      grayscale_prob=0.2,
      blur_prob=blur_prob,
      blur_sigma_min=0.1,
      blur_sigma_max=2.0,
      blur_kernel_fraction=0.1,
      solarize_prob=solarize_prob,
      solarize_threshold=0.5,
  ))


def imagenet_config(epochs: int, base_lr: float, weight_decay: float,
                    base_ema: float) -> ml_collections.ConfigDict:
  """The reference's ImageNet pretraining setup."""
  return ml_collections.ConfigDict(dict(
      seed=0,
      dataset=dict(
          name='imagenet2012',
          data_dir='',  # '' = TFDS's default (~/tensorflow_datasets).
          fashion_mnist_dir='/usr/share/datasets/fashion-mnist',
          # As in the reference: all of ImageNet's train split (TFDS train);
          # 'train' holds out its first 10,000 images as 'valid'.
          train_split='train_and_valid',
          image_size=224,
          crop_area_min=0.08,
          crop_area_max=1.0,
          crop_aspect_min=3 / 4,
          crop_aspect_max=4 / 3,
      ),
      model=dict(
          # width_multiplier scales every channel count (1-4 in the paper;
          # fractions such as 0.25 make CPU-sized nets). zero_init_last_bn
          # mirrors the reference code; the paper's numbers used False.
          encoder=dict(depth=50, width_multiplier=1.0, resnet_v2=False,
                       small_image_stem=False, zero_init_last_bn=True),
          projector_hidden_size=4096,
          projector_output_size=256,
          predictor_hidden_size=4096,
          bn_decay=0.9,
          bn_eps=1e-5,
      ),
      augment=dict(view1=view_config(blur_prob=1.0, solarize_prob=0.0),
                   view2=view_config(blur_prob=0.1, solarize_prob=0.2)),
      optimizer=dict(base_learning_rate=base_lr, weight_decay=weight_decay,
                     momentum=0.9, eta=1e-3, warmup_epochs=10.0),
      training=dict(global_batch_size=4096, num_epochs=float(epochs),
                    max_steps=0,  # > 0 overrides num_epochs.
                    base_target_ema=base_ema),
      logging=dict(log_every_steps=100),
      # keep: newest checkpoints kept. stop_check_every_steps: with several
      # hosts, how often they share a SIGTERM/SIGINT (a small collective);
      # they then stop together within this many steps.
      checkpointing=dict(every_steps=5000, every_secs=1800.0, keep=3,
                         stop_check_every_steps=10),
  ))


def demo_config() -> ml_collections.ConfigDict:
  """Fashion-MNIST on a 2-core CPU: a narrow ResNet-18 at 32 px."""
  config = imagenet_config(epochs=1, base_lr=1.0, weight_decay=1e-6,
                           base_ema=0.99)
  config.dataset.name = 'fashion_mnist'
  config.dataset.image_size = 32
  config.model.encoder.update(depth=18, width_multiplier=0.25,
                              small_image_stem=True)
  config.model.projector_hidden_size = 512
  config.model.predictor_hidden_size = 512
  config.model.projector_output_size = 128
  config.optimizer.warmup_epochs = 0.1
  config.training.update(global_batch_size=128, num_epochs=1.0)
  config.logging.log_every_steps = 20
  config.checkpointing.update(every_steps=100, every_secs=120.0, keep=2)
  return config


def get_config(preset: str = '1000ep') -> ml_collections.ConfigDict:
  """Returns the config of `preset` (see the module docstring)."""
  if preset == 'demo':
    return demo_config()
  if preset not in _IMAGENET_PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of '
                     f'{sorted(_IMAGENET_PRESETS) + ["demo"]}')
  base_lr, weight_decay, base_ema = _IMAGENET_PRESETS[preset]
  return imagenet_config(int(preset[:-2]), base_lr, weight_decay, base_ema)
