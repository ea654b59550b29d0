"""LARS against a hand computation, its masks, and the two schedules."""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import networks
from byol_jax import optim
from byol_jax import train_loop
from experiments.configs import byol as byol_configs


def _schedule(step, **kw):
  args = dict(base_learning_rate=0.2, global_batch_size=4096,
              warmup_steps=10, total_steps=110)
  args.update(kw)
  return float(optim.learning_rate_schedule(step, **args))


def test_learning_rate_warmup_and_cosine():
  peak = 0.2 * 4096 / 256
  assert _schedule(0) == 0.0
  np.testing.assert_allclose(_schedule(5), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(_schedule(10), peak, rtol=1e-6)
  # Middle of the cosine part (step 10 + 50): half the peak.
  np.testing.assert_allclose(_schedule(60), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(_schedule(110), 0.0, atol=1e-6)
  np.testing.assert_allclose(_schedule(500), 0.0, atol=1e-6)


def test_target_ema_schedule():
  tau = lambda k: float(optim.target_ema_schedule(k, base_ema=0.99,
                                                  total_steps=100))
  np.testing.assert_allclose(tau(0), 0.99, rtol=1e-7)
  np.testing.assert_allclose(tau(50), 0.995, rtol=1e-7)
  assert tau(100) == 1.0
  assert tau(1000) == 1.0  # Clamped past the end.
  values = [tau(k) for k in range(0, 120, 7)]
  assert all(b >= a for a, b in zip(values, values[1:]))


def _resnet_params():
  def forward(x):
    bn = dict(decay_rate=0.9, eps=1e-5, create_scale=True, create_offset=True,
              cross_replica_axis=None)
    embedding = networks.make_encoder(depth=18, bn_config=bn)(x, True)
    return networks.MLP(hidden_size=8, output_size=4, bn_config=bn,
                        name='projector')(embedding, True)
  transformed = hk.transform_with_state(forward)
  return jax.eval_shape(
      lambda: transformed.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))[0]


def test_masks_over_a_real_resnet():
  params = _resnet_params()
  mask = optim.exclude_bias_and_norm(params)
  for module, name, masked_in in hk.data_structures.traverse(mask):
    is_norm = 'norm' in module
    if name == 'b' or is_norm:
      assert not masked_in, (module, name)
    else:
      assert masked_in, (module, name)
      assert name == 'w'
  kinds = {(('norm' in m), n) for m, n, _ in hk.data_structures.traverse(mask)}
  assert (True, 'scale') in kinds and (True, 'offset') in kinds
  assert (False, 'w') in kinds and (False, 'b') in kinds


def _reference_lars(params, grads_per_step, lrs, wd, momentum, eta, mask):
  """Reference order: wd -> trust ratio -> momentum -> × -lr (numpy)."""
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  params = {k: v.copy() for k, v in params.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for k in params:
      g = grads[k]
      if mask[k]:
        g = g + wd * params[k]
        p_norm, g_norm = np.linalg.norm(params[k]), np.linalg.norm(g)
        if p_norm > 0 and g_norm > 0:
          g = g * eta * p_norm / g_norm
      mu[k] = momentum * mu[k] + g
      params[k] = params[k] - lr * mu[k]
  return params


@pytest.mark.parametrize('num_steps', [1, 10])
def test_lars_matches_hand_computation(num_steps):
  rng = np.random.default_rng(0)
  params = {'linear': {'w': rng.normal(size=(3, 4)).astype(np.float32),
                       'b': rng.normal(size=(4,)).astype(np.float32)},
            'batch_norm': {'scale': rng.normal(size=(4,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                        params) for _ in range(num_steps)]
  lrs = [0.5 + 0.3 * k for k in range(num_steps)]  # A changing lr.
  wd, momentum, eta = 1e-2, 0.9, 1e-3

  current = jax.tree.map(jnp.asarray, params)
  opt_state = optim.lars(0.0).init(current)
  for g, lr in zip(grads, lrs):
    tx = optim.lars(lr, weight_decay=wd, momentum=momentum, eta=eta)
    updates, opt_state = tx.update(g, opt_state, current)
    current = jax.tree.map(lambda p, u: p + u, current, updates)

  flat = lambda t: {f'{m}/{n}': np.asarray(v) for m, n, v in
                    hk.data_structures.traverse(t)}
  mask = {'linear/w': True, 'linear/b': False, 'batch_norm/scale': False}
  expected = _reference_lars(flat(params), [flat(g) for g in grads], lrs, wd,
                             momentum, eta, mask)
  for key, value in flat(current).items():
    np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)


IMAGENET_TRAIN_AND_VALID = 1_281_167  # TFDS imagenet2012 'train'


@pytest.mark.parametrize('preset', ['40ep', '100ep', '300ep', '1000ep'])
def test_imagenet_schedules_per_preset_on_one_and_four_devices(preset):
  config = byol_configs.get_config(preset)
  schedules = train_loop.run_length(config, IMAGENET_TRAIN_AND_VALID,
                                    config.optimizer.warmup_epochs)
  steps_per_epoch = IMAGENET_TRAIN_AND_VALID / 4096
  epochs = int(preset[:-2])
  assert schedules.global_batch_size == 4096
  assert schedules.warmup_steps == round(10 * steps_per_epoch) == 3128
  assert schedules.total_steps == math.ceil(epochs * steps_per_epoch)
  warmup, total = schedules.warmup_steps, schedules.total_steps
  base_lr = config.optimizer.base_learning_rate
  base_ema = config.training.base_target_ema

  def both(step):
    return (optim.learning_rate_schedule(
                step, base_learning_rate=base_lr, global_batch_size=4096,
                warmup_steps=warmup, total_steps=total),
            optim.target_ema_schedule(step, base_ema=base_ema,
                                      total_steps=total))

  steps = np.array([0, 1, warmup // 2, warmup, (warmup + total) // 2,
                    total - 1, total, total + 1000], np.int32)
  lr, tau = jax.jit(jax.vmap(both))(steps)
  devices = jax.local_device_count()
  assert devices == 4
  lr4, tau4 = jax.pmap(jax.vmap(both))(np.broadcast_to(steps,
                                                       (devices, len(steps))))
  for d in range(devices):  # Bit for bit the same on every device.
    np.testing.assert_array_equal(lr4[d], lr)
    np.testing.assert_array_equal(tau4[d], tau)

  # The formulas in float64: lr warm-up to base·4096/256 = 16·base, then
  # cosine to 0 at the end; τ from τ_base up to 1 over the whole run.
  k = steps.astype(np.float64)
  peak = 16 * base_lr
  cosine = lambda x, n: 0.5 * (1 + np.cos(np.pi * np.minimum(x, n) / n))
  expected_lr = np.where(k < warmup, peak * k / warmup,
                         peak * cosine(k - warmup, total - warmup))
  expected_tau = 1 - (1 - base_ema) * cosine(k, total)
  np.testing.assert_allclose(lr, expected_lr, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tau, expected_tau, rtol=1e-6, atol=1e-7)
  assert lr[3] == pytest.approx(peak, rel=1e-6)  # end of warm-up
  assert lr[4] == pytest.approx(peak / 2, rel=1e-3)  # middle of the cosine
  assert tau[0] == pytest.approx(base_ema, abs=1e-7)
  assert tau[-2] == tau[-1] == 1.0
  assert (np.diff(tau) >= 0).all()
