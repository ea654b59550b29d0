"""Tests for byol_jax.networks: shapes, parameter counts and names, parity
with the reference, small-image stem, cross-replica batch norm, arguments."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import conv
from byol_jax import networks

BN = dict(decay_rate=0.9, eps=1e-5, create_scale=True, create_offset=True)


def _key(seed: int) -> jax.Array:
  # RBG keys: on this CPU, threefry sampling compiles for seconds per weight
  # shape, while any key implementation exercises the same initialisers.
  return jax.random.key(seed, impl='rbg')


def _torso_fn(make_net, is_training=True):
  """A transform of `make_net()(images)`; the net is built inside the transform.

  Left un-jitted: for these tiny nets, op-by-op beats compiling on the CPU.
  """
  return hk.transform_with_state(
      lambda x: make_net()(x, is_training=is_training))


def _shapes(make_net, image_shape):
  """(params, state, output) as ShapeDtypeStructs, without any compute."""
  f = _torso_fn(make_net)
  images = jax.ShapeDtypeStruct(image_shape, jnp.float32)
  params, state = jax.eval_shape(f.init, _key(0), images)
  out, _ = jax.eval_shape(f.apply, params, state, None, images)
  return params, state, out


def _num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize('depth,width,v2,embedding_size', [
    (18, 1, False, 512),
    (18, 2, True, 1024),
    (34, 1, True, 512),
    (50, 1, False, 2048),
    (50, 3, True, 6144),
    (101, 1, False, 2048),
    (18, 0.125, False, 64),  # the narrow nets of the fast tests
    (50, 0.25, True, 512),
])
def test_embedding_shape(depth, width, v2, embedding_size):
  _, _, out = _shapes(
      lambda: networks.make_encoder(depth, width, resnet_v2=v2, bn_config=BN),
      (2, 32, 32, 3))
  assert out.shape == (2, embedding_size)
  assert out.dtype == jnp.float32


# Expected counts from the architecture (trainable params; BN moving averages
# are state). torchvision's ResNet-50 has 25,557,032 params, of which the
# 1000-way fc is 2048*1000 + 1000 = 2,049,000; its torso has the same layers as
# the reference's, projections in all four groups included -> 23,508,032.
RESNET50_V1 = 25_557_032 - 2_049_000
# torchvision ResNet-18: 11,689,512 - fc (512*1000 + 1000) = 11,176,512; the
# reference also projects in group 0 (1x1 conv 64->64 + BN): + 4,096 + 128.
RESNET18_V1 = 11_689_512 - 513_000 + 64 * 64 + 2 * 64
# v2 from v1: no initial BN (-2*64), no shortcut BNs (-2*(256+512+1024+2048)),
# a final BN (+2*2048), and each group's first block normalises its cin input
# channels instead of its cout outputs: 2*(cin - cout) for (cin, cout) in
# (64, 256), (256, 512), (512, 1024), (1024, 2048).
RESNET50_V2 = (RESNET50_V1 - 2 * 64 - 2 * 3840 + 2 * 2048
               + 2 * ((64 - 256) + (256 - 512) + (512 - 1024) + (1024 - 2048)))


@pytest.mark.parametrize('depth,v2,expected', [
    (18, False, RESNET18_V1),
    (50, False, RESNET50_V1),
    (50, True, RESNET50_V2),
])
def test_param_count(depth, v2, expected):
  params, _, _ = _shapes(
      lambda: networks.make_encoder(depth, resnet_v2=v2, bn_config=BN),
      (1, 32, 32, 3))
  assert _num_params(params) == expected


def _expected_resnet50_modules(v2: bool) -> set[str]:
  """Parameter module paths of the reference's ResNet50, from its scheme."""
  root = 'res_net50/~/'
  names = {root + 'initial_conv'}
  names.add(root + ('final_batchnorm' if v2 else 'initial_batchnorm'))
  for g, num_blocks in enumerate((3, 4, 6, 3)):
    for b in range(num_blocks):
      block = f'{root}block_group_{g}/~/block_{b}/~/'
      names.update(block + f'{kind}_{k}' for kind in ('conv', 'batchnorm')
                   for k in range(3))
      if b == 0:
        names.add(block + 'shortcut_conv')
        if not v2:
          names.add(block + 'shortcut_batchnorm')
  return names


@pytest.mark.parametrize('v2', [False, True])
def test_resnet50_names_follow_reference_scheme(v2):
  params, state, _ = _shapes(
      lambda: networks.ResNet50(bn_config=BN, resnet_v2=v2), (1, 32, 32, 3))
  expected = _expected_resnet50_modules(v2)
  assert set(params) == expected
  for name, leaves in params.items():
    assert set(leaves) == ({'w'} if name.rsplit('/', 1)[-1].startswith(
        ('initial_conv', 'conv_', 'shortcut_conv')) else {'scale', 'offset'})
  bn_modules = {n for n in expected if 'batchnorm' in n}
  assert set(state) == ({f'{n}/~/mean_ema' for n in bn_modules}
                        | {f'{n}/~/var_ema' for n in bn_modules})
  stem = params['res_net50/~/initial_conv']['w']
  assert stem.shape == (7, 7, 3, 64)
  assert params['res_net50/~/block_group_3/~/block_0/~/conv_1']['w'].shape == (
      3, 3, 512, 512)


class _ReferenceTorso(hk.Module):
  """Test oracle: the reference's ResNetTorso (byol/utils/networks.py) expressed
  with Haiku's own `hk.nets.ResNet.BlockGroup`, as the reference builds it."""

  def __init__(self, blocks, channels, bottleneck, resnet_v2, name,
               stem_channels=64):
    super().__init__(name=name)
    self._v2 = resnet_v2
    self._conv = hk.Conv2D(stem_channels, 7, stride=2, with_bias=False,
                           padding='SAME', name='initial_conv')
    if not resnet_v2:
      self._bn = hk.BatchNorm(name='initial_batchnorm', **BN)
    self._groups = [
        hk.nets.ResNet.BlockGroup(
            channels=channels[g], num_blocks=blocks[g], stride=(1, 2, 2, 2)[g],
            bn_config=BN, resnet_v2=resnet_v2, bottleneck=bottleneck,
            use_projection=True, name=f'block_group_{g}')
        for g in range(4)]
    if resnet_v2:
      self._final_bn = hk.BatchNorm(name='final_batchnorm', **BN)

  def __call__(self, x, is_training):
    x = self._conv(x)
    if not self._v2:
      x = jax.nn.relu(self._bn(x, is_training))
    x = hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), 'SAME')
    for group in self._groups:
      x = group(x, is_training, False)
    if self._v2:
      x = jax.nn.relu(self._final_bn(x, is_training))
    return jnp.mean(x, axis=(1, 2))


@pytest.mark.parametrize('bottleneck,v2', [(True, False), (False, True)])
def test_matches_reference_blocks(bottleneck, v2, monkeypatch):
  """Same names, shapes, initial values (so the same initialisers and creation
  order), BN state, outputs and state updates as the reference's construction.
  The two cases cover both block kinds and both versions (layer shapes are
  shared code). XLA's convolution on both sides makes them bitwise
  comparable; test_conv.py shows the CPU patches path computes the same."""
  monkeypatch.setenv(conv.IMPLEMENTATION_ENV, 'xla')
  blocks, channels = (2, 1, 1, 1), (8, 8, 16, 16)
  ours = _torso_fn(lambda: networks.ResNetTorso(
      blocks, bn_config=BN, resnet_v2=v2, bottleneck=bottleneck,
      channels_per_group=channels, name='res_net'))
  ref = _torso_fn(lambda: _ReferenceTorso(blocks, channels, bottleneck, v2,
                                          name='res_net'))
  images = jax.random.normal(_key(3), (2, 8, 8, 3))
  params, state = ours.init(_key(0), images)
  ref_params, ref_state = ref.init(_key(0), images)
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)
  out, new_state = ours.apply(params, state, None, images)
  ref_out, ref_new_state = ref.apply(params, state, None, images)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
      new_state, ref_new_state)
  assert out.shape == (2, channels[-1])
  assert bool(jnp.all(jnp.isfinite(out)))
  # Training mode moved the batch-norm moving averages.
  assert any(bool(jnp.any(a != b)) for a, b in
             zip(jax.tree.leaves(state), jax.tree.leaves(new_state)))


@pytest.mark.parametrize('zero_init,expected_scale',
                         [(True, 0.0), (False, 1.0)])
def test_zero_init_last_bn(zero_init, expected_scale):
  params, _ = _torso_fn(lambda: networks.ResNetTorso(
      (1, 1, 1, 1), bn_config=BN, channels_per_group=(4, 4, 4, 4),
      zero_init_last_bn=zero_init, name='res_net')).init(
          _key(0), jnp.zeros((1, 4, 4, 3)))
  block = 'res_net/~/block_group_0/~/block_0/~/'
  np.testing.assert_array_equal(params[block + 'batchnorm_2']['scale'],
                                expected_scale)
  np.testing.assert_array_equal(params[block + 'batchnorm_1']['scale'], 1.0)


def _group_input_sizes(make_net, image_side):
  """Spatial (H, W) reaching each block group, seen by a method interceptor."""
  sizes = []

  def record(next_f, args, kwargs, context):
    if (isinstance(context.module, networks.BlockGroup)
        and context.method_name == '__call__'):
      sizes.append(args[0].shape[1:3])
    return next_f(*args, **kwargs)

  def fn(x):
    with hk.intercept_methods(record):
      return make_net()(x, is_training=True)

  images = jax.ShapeDtypeStruct((1, image_side, image_side, 3), jnp.float32)
  jax.eval_shape(hk.transform_with_state(fn).init, _key(0), images)
  return sizes


@pytest.mark.parametrize('v2', [False, True])
def test_small_image_stem_keeps_spatial_size(v2):
  small = _group_input_sizes(lambda: networks.ResNet18(
      bn_config=BN, resnet_v2=v2, small_image_stem=True), 32)
  standard = _group_input_sizes(lambda: networks.ResNet18(
      bn_config=BN, resnet_v2=v2), 32)
  assert small == [(32, 32), (32, 32), (16, 16), (8, 8)]
  assert standard == [(8, 8), (8, 8), (4, 4), (2, 2)]
  params, _, out = _shapes(lambda: networks.ResNet18(
      bn_config=BN, resnet_v2=v2, small_image_stem=True), (2, 32, 32, 3))
  assert params['res_net18/~/initial_conv']['w'].shape == (3, 3, 3, 64)
  assert out.shape == (2, 512)


def test_mlp_structure_names_and_shared_params():
  def fn(x):
    mlp = networks.MLP(name='projector', hidden_size=32, output_size=8,
                       bn_config=BN)
    return mlp(x, is_training=True), mlp(x + 1.0, is_training=True)

  params, state = hk.transform_with_state(fn).init(
      _key(0), jnp.ones((4, 16)))
  # Called twice (two views), yet one set of weights.
  assert {k: {n: v.shape for n, v in p.items()} for k, p in params.items()} == {
      'projector/linear': {'w': (16, 32), 'b': (32,)},
      'projector/batch_norm': {'scale': (1, 32), 'offset': (1, 32)},
      'projector/linear_1': {'w': (32, 8)},
  }
  assert set(state) == {'projector/batch_norm/~/mean_ema',
                        'projector/batch_norm/~/var_ema'}


def test_mlp_default_sizes():
  params, _ = jax.eval_shape(
      hk.transform_with_state(
          lambda x: networks.MLP(name='predictor', bn_config=BN)(x, True)).init,
      _key(0), jax.ShapeDtypeStruct((2, 2048), jnp.float32))
  assert params['predictor/linear']['w'].shape == (2048, 4096)
  assert params['predictor/linear_1']['w'].shape == (4096, 256)


def test_cross_replica_batch_norm_under_pmap():
  """With cross_replica_axis='i', four devices normalise with the statistics of
  the whole batch: outputs and moving averages equal a one-device run on the
  concatenated batch, and every device holds the same state."""
  n = jax.local_device_count()
  assert n == 4, 'conftest.py should simulate 4 CPU devices'

  def mlp_fn(axis):
    return hk.transform_with_state(lambda x: networks.MLP(
        name='projector', hidden_size=16, output_size=4,
        bn_config=dict(BN, cross_replica_axis=axis))(x, is_training=True))

  inputs = jax.random.normal(_key(2), (n, 3, 8)) * jnp.arange(
      1.0, n + 1.0)[:, None, None]  # different statistics on every device
  params, state = mlp_fn(None).init(_key(0), inputs[0])
  sharded_out, sharded_state = jax.pmap(
      lambda x: mlp_fn('i').apply(params, state, None, x),
      axis_name='i')(inputs)
  full_out, full_state = mlp_fn(None).apply(
      params, state, None, inputs.reshape(n * 3, 8))

  np.testing.assert_allclose(sharded_out.reshape(n * 3, 4), full_out,
                             rtol=1e-5, atol=1e-5)
  for replicated, single in zip(jax.tree.leaves(sharded_state),
                                jax.tree.leaves(full_state)):
    for device in range(n):
      np.testing.assert_allclose(replicated[device], single,
                                 rtol=1e-5, atol=1e-6)


def test_cross_replica_batch_norm_in_resnet_under_pmap():
  """Every batch norm of the torso gets the axis: all devices end with the same
  moving averages although each saw different images."""
  n = jax.local_device_count()
  f = _torso_fn(lambda: networks.TinyResNet(
      bn_config=dict(BN, cross_replica_axis='i')))
  init_f = _torso_fn(lambda: networks.TinyResNet(bn_config=BN))
  images = jax.random.normal(_key(4), (n, 2, 8, 8, 3))
  params, state = init_f.init(_key(0), images[0])
  _, new_state = jax.pmap(lambda x: f.apply(params, state, None, x),
                          axis_name='i')(images)
  for leaf in jax.tree.leaves(new_state):
    for device in range(1, n):
      np.testing.assert_allclose(leaf[device], leaf[0], rtol=1e-5, atol=1e-6)
  mean = new_state['tiny_res_net/~/initial_batchnorm/~/mean_ema']['average']
  assert bool(jnp.any(mean != 0))


@pytest.mark.parametrize('depth', [0, 20, 51])
def test_make_encoder_rejects_unsupported_depth(depth):
  with pytest.raises(ValueError, match=r'one of \[18, 34, 50, 101, 152, 200\]'):
    networks.make_encoder(depth, bn_config=BN)


@pytest.mark.parametrize('width', [0, -1, 0.3, 1.5 / 64])
def test_make_encoder_rejects_fractional_channels(width):
  with pytest.raises(ValueError, match='whole, positive counts'):
    networks.make_encoder(50, width, bn_config=BN)


def test_make_encoder_picks_reference_class():
  names = []

  def fn():
    names.extend(networks.make_encoder(d, bn_config=BN).module_name
                 for d in (18, 34, 50, 101, 152, 200))

  hk.transform(fn).init(None)
  assert names == ['res_net18', 'res_net34', 'res_net50', 'res_net101',
                   'res_net152', 'res_net200']
