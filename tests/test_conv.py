"""The CPU patches convolution equals XLA's convolution and hk.Conv2D."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import conv
from byol_jax import networks


def _xla_conv(inputs, kernel, stride):
  return jax.lax.conv_general_dilated(
      inputs, kernel, (stride, stride), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize('size,kernel,stride,channels', [
    (2, 3, 1, 8),  # the last ResNet stage at 64 px
    (4, 3, 1, 5),
    (7, 3, 2, 4),  # odd size, strided: asymmetric SAME padding
    (8, 3, 2, 4),
    (9, 1, 1, 6),
    (9, 1, 2, 6),  # strided shortcut projection
    (16, 7, 2, 3),  # ImageNet stem
])
def test_patches_conv_equals_xla_forward_and_gradients(size, kernel, stride,
                                                       channels):
  rng = np.random.default_rng(size * 10 + kernel)
  inputs = jnp.asarray(rng.normal(size=(3, size, size, channels)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(kernel, kernel, channels, 7)),
                        jnp.float32)
  ours = conv.patches_conv(inputs, weights, stride)
  theirs = _xla_conv(inputs, weights, stride)
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w, stride)))
  ours_grads = jax.grad(loss(conv.patches_conv), argnums=(0, 1))(inputs,
                                                                 weights)
  theirs_grads = jax.grad(loss(_xla_conv), argnums=(0, 1))(inputs, weights)
  for a, b in zip(ours_grads, theirs_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_same_padding_matches_tensorflow_rule():
  assert conv.same_padding(7, 3, 2) == (1, 1)
  assert conv.same_padding(8, 3, 2) == (0, 1)
  assert conv.same_padding(224, 7, 2) == (2, 3)
  assert conv.same_padding(5, 1, 2) == (0, 0)


@pytest.mark.parametrize('implementation', ['patches', 'xla'])
def test_module_has_hk_conv2d_names_shapes_init_and_outputs(
    implementation, monkeypatch):
  monkeypatch.setenv(conv.IMPLEMENTATION_ENV, implementation)
  inputs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 4)),
                       jnp.float32)

  def ours(x):
    return conv.Conv2D(6, 3, stride=2, name='conv_0')(x)

  def haiku(x):
    return hk.Conv2D(6, 3, stride=2, with_bias=False, padding='SAME',
                     name='conv_0')(x)

  ours_fn, haiku_fn = hk.transform(ours), hk.transform(haiku)
  key = jax.random.key(1)
  ours_params = ours_fn.init(key, inputs)
  haiku_params = haiku_fn.init(key, inputs)
  assert jax.tree.structure(ours_params) == jax.tree.structure(haiku_params)
  # Same initialiser and key: the same initial weights.
  np.testing.assert_array_equal(ours_params['conv_0']['w'],
                                haiku_params['conv_0']['w'])
  np.testing.assert_allclose(ours_fn.apply(haiku_params, None, inputs),
                             haiku_fn.apply(haiku_params, None, inputs),
                             rtol=1e-5, atol=1e-5)


def test_resnet_is_the_same_function_under_both_implementations(monkeypatch):
  images = jnp.asarray(
      np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)

  def forward(x):
    return networks.make_encoder(18, width_multiplier=0.125,
                                 bn_config={})(x, is_training=True)

  net = hk.transform_with_state(forward)
  outputs = {}
  for implementation in ('patches', 'xla'):
    monkeypatch.setenv(conv.IMPLEMENTATION_ENV, implementation)
    params, state = net.init(jax.random.key(0), images)
    outputs[implementation] = (params, jax.jit(net.apply)(
        params, state, None, images)[0])
  assert (jax.tree.structure(outputs['patches'][0]) ==
          jax.tree.structure(outputs['xla'][0]))
  np.testing.assert_allclose(outputs['patches'][1], outputs['xla'][1],
                             rtol=1e-4, atol=1e-4)


def test_bad_implementation_name_is_a_clear_error(monkeypatch):
  monkeypatch.setenv(conv.IMPLEMENTATION_ENV, 'fast')
  with pytest.raises(ValueError, match='use one of auto, patches, xla'):
    conv.use_patches(3, 4)


def test_auto_takes_patches_for_1x1_and_small_maps_on_cpu(monkeypatch):
  monkeypatch.delenv(conv.IMPLEMENTATION_ENV, raising=False)
  assert conv.use_patches(3, 2 * 2)
  assert conv.use_patches(1, 32 * 32)
  assert not conv.use_patches(3, 16 * 16)
