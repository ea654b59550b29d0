"""Haiku networks for BYOL: ResNet torsos (v1, v2) and the projector MLP.

Everything here runs inside `hk.transform_with_state`. Module and parameter
names reproduce those of DeepMind's reference (`byol/utils/networks.py`, built
on `hk.nets.ResNet.BlockGroup`), so its checkpoints map onto these networks key
for key. For `ResNet50` (other depths differ in the prefix and block counts),
with g = group 0-3, b = block, k = layer 0-2 (0-1 in the basic blocks of
depths 18 and 34), all under `res_net50/~/`:

  initial_conv                                   w
  initial_batchnorm                              scale, offset    (v1 only)
  block_group_{g}/~/block_{b}/~/conv_{k}         w
  block_group_{g}/~/block_{b}/~/batchnorm_{k}    scale, offset
  block_group_{g}/~/block_0/~/shortcut_conv      w
  block_group_{g}/~/block_0/~/shortcut_batchnorm scale, offset    (v1 only)
  final_batchnorm                                scale, offset    (v2 only)

The state holds `<bn>/~/mean_ema` and `<bn>/~/var_ema` for every batch norm.
`MLP(name='projector')` owns `projector/linear` (w, b), `projector/batch_norm`
(scale, offset) and `projector/linear_1` (w): as in the reference, its layers
are built in `__call__`, hence no `~` in those names.
"""

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import jmp

from byol_jax import conv

# Keyword arguments of `hk.BatchNorm`: `decay_rate`, `eps`, `create_scale`,
# `create_offset`, `cross_replica_axis` (None, or the pmap axis name, e.g. 'i').
BNConfig = Mapping[str, Any]

_BN_DEFAULTS = dict(decay_rate=0.9, eps=1e-5, create_scale=True,
                    create_offset=True)


def _with_bn_defaults(bn_config: BNConfig | None) -> dict[str, Any]:
  """The reference's batch-norm defaults, overridden by `bn_config`."""
  return {**_BN_DEFAULTS, **(bn_config or {})}


class MLP(hk.Module):
  """Projector / predictor: Linear -> BatchNorm -> ReLU -> Linear (no bias)."""

  def __init__(self, name: str, hidden_size: int = 4096, output_size: int = 256,
               bn_config: BNConfig | None = None):
    super().__init__(name=name)
    self._hidden_size = hidden_size
    self._output_size = output_size
    self._bn_config = _with_bn_defaults(bn_config)

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    """f32[B, D_in] -> f32[B, output_size].

    Layers are created here rather than in `__init__`, which gives the
    reference's names (`projector/linear`, not `projector/~/linear`); calling
    the module again (second view) reuses the same parameters.
    """
    out = hk.Linear(self._hidden_size, with_bias=True)(inputs)
    out = hk.BatchNorm(**self._bn_config)(out, is_training=is_training)
    out = jax.nn.relu(out)
    return hk.Linear(self._output_size, with_bias=False)(out)


def _scaled_channels(base: int, width_multiplier: float) -> int:
  """base·width_multiplier, which must be a whole, positive channel count.

  The paper's widths are 1-4; fractions (e.g. 0.125) give the narrow nets that
  keep tests fast on CPUs.
  """
  channels = base * width_multiplier
  if channels < 1 or channels != int(channels):
    raise ValueError(f'width_multiplier {width_multiplier} turns {base} '
                     f'channels into {channels}; it must give whole, positive '
                     'counts (the paper uses 1, 2, 3, 4)')
  return int(channels)


def _conv(channels: int, kernel: int, stride: int, name: str) -> conv.Conv2D:
  # Every ResNet conv: SAME padding, no bias (a batch norm is next to it).
  # Same names and parameters as hk.Conv2D, faster on CPUs (see conv.py).
  return conv.Conv2D(output_channels=channels, kernel_shape=kernel,
                     stride=stride, name=name)


def _layer_shapes(channels: int, stride: int,
                  bottleneck: bool) -> list[tuple[int, int, int]]:
  """(output channels, kernel, stride) of each conv of a block's branch.

  Bottleneck: 1x1 (channels/4) -> 3x3 (channels/4, strided) -> 1x1 (channels).
  Basic: 3x3 (channels, strided) -> 3x3 (channels).
  """
  if bottleneck:
    return [(channels // 4, 1, 1), (channels // 4, 3, stride), (channels, 1, 1)]
  return [(channels, 3, stride), (channels, 3, 1)]


class BlockV1(hk.Module):
  """Post-activation residual block: relu(branch(x) + shortcut(x)).

  As in Haiku's ResNet (used by the reference), the scale of the last batch norm
  of a bottleneck block starts at zero when `zero_init_last_bn` (Goyal et al.
  2017), so each block starts as the identity; basic blocks never do this.
  """

  def __init__(self, channels: int, stride: int, use_projection: bool,
               bottleneck: bool, bn_config: BNConfig, zero_init_last_bn: bool,
               name: str):
    super().__init__(name=name)
    self._use_projection = use_projection
    if use_projection:
      self._proj_conv = _conv(channels, 1, stride, 'shortcut_conv')
      self._proj_bn = hk.BatchNorm(name='shortcut_batchnorm', **bn_config)
    shapes = _layer_shapes(channels, stride, bottleneck)
    self._layers = []
    for k, (out_channels, kernel, layer_stride) in enumerate(shapes):
      zero_scale = zero_init_last_bn and bottleneck and k == len(shapes) - 1
      bn_kwargs = dict(bn_config)
      if zero_scale:
        bn_kwargs['scale_init'] = jnp.zeros
      self._layers.append(
          (_conv(out_channels, kernel, layer_stride, f'conv_{k}'),
           hk.BatchNorm(name=f'batchnorm_{k}', **bn_kwargs)))

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    shortcut = inputs
    # The shortcut is built first: parameter creation order fixes which random
    # key each initialiser gets, and this order is the reference's.
    if self._use_projection:
      shortcut = self._proj_bn(self._proj_conv(inputs), is_training)
    out = inputs
    for k, (conv, bn) in enumerate(self._layers):
      out = bn(conv(out), is_training)
      if k < len(self._layers) - 1:
        out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


class BlockV2(hk.Module):
  """Pre-activation residual block: branch(x) + shortcut(x), no final ReLU.

  Batch norm + ReLU precede each conv; the projection shortcut (no batch norm)
  reads the first pre-activation, not the raw input.
  """

  def __init__(self, channels: int, stride: int, use_projection: bool,
               bottleneck: bool, bn_config: BNConfig, name: str):
    super().__init__(name=name)
    self._use_projection = use_projection
    if use_projection:
      self._proj_conv = _conv(channels, 1, stride, 'shortcut_conv')
    self._layers = [
        (_conv(out_channels, kernel, layer_stride, f'conv_{k}'),
         hk.BatchNorm(name=f'batchnorm_{k}', **bn_config))
        for k, (out_channels, kernel, layer_stride)
        in enumerate(_layer_shapes(channels, stride, bottleneck))]

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    out = shortcut = inputs
    for k, (conv, bn) in enumerate(self._layers):
      out = jax.nn.relu(bn(out, is_training))
      if k == 0 and self._use_projection:
        shortcut = self._proj_conv(out)
      out = conv(out)
    return out + shortcut


class BlockGroup(hk.Module):
  """`num_blocks` residual blocks; only the first strides and may project."""

  def __init__(self, channels: int, num_blocks: int, stride: int,
               use_projection: bool, bottleneck: bool, resnet_v2: bool,
               bn_config: BNConfig, zero_init_last_bn: bool, name: str):
    super().__init__(name=name)
    self._blocks = []
    for b in range(num_blocks):
      kwargs = dict(channels=channels, stride=stride if b == 0 else 1,
                    use_projection=use_projection and b == 0,
                    bottleneck=bottleneck, bn_config=bn_config,
                    name=f'block_{b}')
      if resnet_v2:
        self._blocks.append(BlockV2(**kwargs))
      else:
        self._blocks.append(
            BlockV1(zero_init_last_bn=zero_init_last_bn, **kwargs))

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    out = inputs
    for block in self._blocks:
      out = block(out, is_training)
    return out


class ResNetTorso(hk.Module):
  """ResNet without its classification layer: images -> pooled embedding.

  Constructor arguments mirror the reference's `ResNetTorso` (less the unused
  `num_classes`); use the fixed-depth subclasses below for reference names.
  """

  def __init__(
      self,
      blocks_per_group: Sequence[int],
      bn_config: BNConfig | None = None,
      resnet_v2: bool = False,
      bottleneck: bool = True,
      channels_per_group: Sequence[int] = (256, 512, 1024, 2048),
      use_projection: Sequence[bool] = (True, True, True, True),
      width_multiplier: float = 1,
      small_image_stem: bool = False,
      zero_init_last_bn: bool = True,
      name: str | None = None,
  ):
    """Builds the torso.

    Args:
      blocks_per_group: number of residual blocks in each of the 4 groups.
      bn_config: `hk.BatchNorm` keyword arguments (see `BNConfig`); missing keys
        default to decay_rate=0.9, eps=1e-5, create_scale/create_offset=True.
      resnet_v2: pre-activation blocks (He et al. 2016b) instead of v1.
      bottleneck: 1x1-3x3-1x1 bottleneck blocks (depths >= 50) instead of basic
        3x3-3x3 blocks (depths 18/34).
      channels_per_group: output channels of each group at width 1.
      use_projection: per group, whether its first block has a 1x1 projection
        shortcut. The reference projects in all four groups at every depth,
        including group 0 of ResNet-18/34 (where torchvision uses the identity).
      width_multiplier: multiplies every channel count, stem included; each
        product must be whole (ValueError otherwise).
      small_image_stem: 3x3 stride-1 stem conv and no max-pool, for 32-64 px
        inputs (CIFAR-style); the conv keeps the name `initial_conv`.
      zero_init_last_bn: v1 bottleneck blocks start with a zero scale in their
        last batch norm, as the reference's Haiku blocks do. The BYOL paper's
        numbers were obtained without it (reference README), so False
        reproduces the paper.
      name: module name; None takes it from the class name.
    """
    super().__init__(name=name)
    if len(blocks_per_group) != 4 or len(channels_per_group) != 4:
      raise ValueError('blocks_per_group and channels_per_group need 4 '
                       f'entries, got {len(blocks_per_group)} and '
                       f'{len(channels_per_group)}')
    self._resnet_v2 = resnet_v2
    self._small_image_stem = small_image_stem
    bn_config = _with_bn_defaults(bn_config)

    stem_channels = _scaled_channels(64, width_multiplier)
    if small_image_stem:
      self._initial_conv = _conv(stem_channels, 3, 1, 'initial_conv')
    else:
      self._initial_conv = _conv(stem_channels, 7, 2, 'initial_conv')
    if not resnet_v2:
      self._initial_bn = hk.BatchNorm(name='initial_batchnorm', **bn_config)
    self._block_groups = [
        BlockGroup(channels=_scaled_channels(channels_per_group[g],
                                             width_multiplier),
                   num_blocks=blocks_per_group[g], stride=1 if g == 0 else 2,
                   use_projection=use_projection[g], bottleneck=bottleneck,
                   resnet_v2=resnet_v2, bn_config=bn_config,
                   zero_init_last_bn=zero_init_last_bn,
                   name=f'block_group_{g}')
        for g in range(4)]
    if resnet_v2:
      # v2 blocks end un-normalised; this is the last pre-activation.
      self._final_bn = hk.BatchNorm(name='final_batchnorm', **bn_config)

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    """f32[B, H, W, C] (normalised images) -> f32[B, D] embedding.

    D = 512·width for basic blocks, 2048·width for bottleneck blocks. Spatial
    size shrinks by 32 (8 with `small_image_stem`). With a `cross_replica_axis`
    in `bn_config` and `is_training`, call this under `pmap` with that axis.
    """
    out = self._initial_conv(inputs)
    if not self._resnet_v2:
      out = jax.nn.relu(self._initial_bn(out, is_training))
    if not self._small_image_stem:
      # Full NHWC window: Haiku warns that int windows break under vmap.
      out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                        padding='SAME')
    for group in self._block_groups:
      out = group(out, is_training)
    if self._resnet_v2:
      out = jax.nn.relu(self._final_bn(out, is_training))
    return jnp.mean(out, axis=(1, 2))


class _FixedResNet(ResNetTorso):
  """A `ResNetTorso` whose blocks and channels are fixed by class attributes.

  Subclasses exist so that the module name comes from the class name
  (`ResNet50` -> `res_net50`), as in the reference.
  """

  BLOCKS_PER_GROUP: tuple[int, int, int, int]
  CHANNELS_PER_GROUP: tuple[int, int, int, int] = (256, 512, 1024, 2048)
  BOTTLENECK: bool = True

  def __init__(self, bn_config: BNConfig | None = None, resnet_v2: bool = False,
               width_multiplier: float = 1, small_image_stem: bool = False,
               zero_init_last_bn: bool = True, name: str | None = None):
    super().__init__(
        blocks_per_group=self.BLOCKS_PER_GROUP, bn_config=bn_config,
        resnet_v2=resnet_v2, bottleneck=self.BOTTLENECK,
        channels_per_group=self.CHANNELS_PER_GROUP,
        width_multiplier=width_multiplier, small_image_stem=small_image_stem,
        zero_init_last_bn=zero_init_last_bn, name=name)


class TinyResNet(_FixedResNet):
  """The reference's net for local runs and tests: one basic block of 8·width
  channels per group; D = 8·width."""
  BLOCKS_PER_GROUP = (1, 1, 1, 1)
  CHANNELS_PER_GROUP = (8, 8, 8, 8)
  BOTTLENECK = False


class ResNet18(_FixedResNet):
  """ResNet-18 torso: basic blocks (2, 2, 2, 2); D = 512·width."""
  BLOCKS_PER_GROUP = (2, 2, 2, 2)
  CHANNELS_PER_GROUP = (64, 128, 256, 512)
  BOTTLENECK = False


class ResNet34(_FixedResNet):
  """ResNet-34 torso: basic blocks (3, 4, 6, 3); D = 512·width."""
  BLOCKS_PER_GROUP = (3, 4, 6, 3)
  CHANNELS_PER_GROUP = (64, 128, 256, 512)
  BOTTLENECK = False


class ResNet50(_FixedResNet):
  """ResNet-50 torso: bottleneck blocks (3, 4, 6, 3); D = 2048·width."""
  BLOCKS_PER_GROUP = (3, 4, 6, 3)


class ResNet101(_FixedResNet):
  """ResNet-101 torso: bottleneck blocks (3, 4, 23, 3); D = 2048·width."""
  BLOCKS_PER_GROUP = (3, 4, 23, 3)


class ResNet152(_FixedResNet):
  """ResNet-152 torso: bottleneck blocks (3, 8, 36, 3); D = 2048·width."""
  BLOCKS_PER_GROUP = (3, 8, 36, 3)


class ResNet200(_FixedResNet):
  """ResNet-200 torso: bottleneck blocks (3, 24, 36, 3); D = 2048·width."""
  BLOCKS_PER_GROUP = (3, 24, 36, 3)


_BY_DEPTH = {18: ResNet18, 34: ResNet34, 50: ResNet50, 101: ResNet101,
             152: ResNet152, 200: ResNet200}


def make_encoder(depth: int, width_multiplier: float = 1,
                 resnet_v2: bool = False, small_image_stem: bool = False, *,
                 bn_config: BNConfig,
                 zero_init_last_bn: bool = True) -> ResNetTorso:
  """The ResNet torso of this depth (call inside a Haiku transform).

  Raises:
    ValueError: `depth` is not 18, 34, 50, 101, 152 or 200, or
      `width_multiplier` does not give whole channel counts.
  """
  if depth not in _BY_DEPTH:
    raise ValueError(f'Unsupported ResNet depth {depth}: '
                     f'depth must be one of {sorted(_BY_DEPTH)}')
  # Checked here too so the error comes before any module is built.
  _scaled_channels(64, width_multiplier)
  return _BY_DEPTH[depth](bn_config=bn_config, resnet_v2=resnet_v2,
                          width_multiplier=width_multiplier,
                          small_image_stem=small_image_stem,
                          zero_init_last_bn=zero_init_last_bn)


COMPUTE_DTYPES = ('float32', 'bfloat16')


@contextlib.contextmanager
def compute_precision(compute_dtype: str,
                      *module_classes: type[hk.Module]) -> Iterator[None]:
  """Runs `module_classes` in `compute_dtype` while the context is active.

  Mixed precision in Haiku's way: parameters stay float32 and are cast for
  the computation; each listed module returns float32, so losses and
  anything outside it stay float32; every `hk.BatchNorm` computes its
  statistics and normalisation in float32 (returning `compute_dtype` to the
  next layer). 'float32' changes nothing.

  Args:
    compute_dtype: one of COMPUTE_DTYPES.
    *module_classes: the outermost modules to run in reduced precision
      (e.g. the encoder's class and `MLP`); modules they contain inherit it.

  Raises:
    ValueError: an unknown dtype name.
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype {compute_dtype!r} is not supported; set '
                     f'--config.model.compute_dtype to one of {COMPUTE_DTYPES}')
  if compute_dtype == 'float32':
    yield
    return
  policy = jmp.get_policy(
      f'params=float32,compute={compute_dtype},output=float32')
  norm_policy = jmp.get_policy(
      f'params=float32,compute=float32,output={compute_dtype}')
  with contextlib.ExitStack() as stack:
    for cls in module_classes:
      stack.enter_context(hk.mixed_precision.push_policy(cls, policy))
    stack.enter_context(hk.mixed_precision.push_policy(hk.BatchNorm,
                                                       norm_policy))
    yield
