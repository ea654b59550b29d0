"""The precomputed-features protocol's maths on 4 simulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from byol_jax import feature_probe
from byol_jax import parallel

DIM, CLASSES = 6, 7


def _problem(seed=0, count=37):
  """Features with a linear class structure, as one unpadded device shard."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, count).astype(np.int32)
  centres = rng.normal(size=(CLASSES, DIM)) * 1.5
  features = (centres[labels] + rng.normal(size=(count, DIM)) * 2.0 + 3.0)
  return features.astype(np.float32), labels


def _shard(features, labels, devices):
  """[D, N, ...] layout, padding at the end with garbage and mask False."""
  per_device = -(-len(labels) // devices)
  padding = per_device * devices - len(labels)
  features = np.concatenate([features, np.full((padding, DIM), 1e3,
                                               np.float32)])
  labels = np.concatenate([labels, np.zeros(padding, np.int32)])
  mask = np.arange(len(labels)) < len(labels) - padding
  return feature_probe.Features(
      features.reshape(devices, per_device, DIM),
      labels.reshape(devices, per_device), mask.reshape(devices, per_device))


def _fit(split, l2, devices, iterations=60):
  pmap = lambda f: jax.pmap(f, axis_name='i', devices=devices)
  moments = pmap(feature_probe.feature_moments)(split.features, split.mask)
  count = len(devices)
  w = jnp.zeros((count, DIM, CLASSES))
  b = jnp.zeros((count, CLASSES))
  w, b, loss = pmap(feature_probe.make_fit_fn(iterations))(
      w, b, *split, moments, jnp.full((count,), l2))
  return parallel.first_replica((w, b, loss, moments))


def test_moments_ignore_padding_and_span_all_devices():
  features, labels = _problem()
  split = _shard(features, labels, 4)
  moments = jax.pmap(feature_probe.feature_moments, axis_name='i')(
      split.features, split.mask)
  mean, inverse_std = parallel.first_replica(moments)
  np.testing.assert_allclose(mean, features.mean(0), rtol=1e-5)
  np.testing.assert_allclose(inverse_std, 1 / features.std(0), rtol=1e-4)


def test_fit_reaches_the_regularised_optimum():
  features, labels = _problem()
  l2 = 1e-2
  w, b, loss, moments = _fit(_shard(features, labels, 4), l2,
                             jax.local_devices())
  inputs = (features - moments.mean) * moments.inverse_std

  def objective(params):
    logits = inputs @ params[0] + params[1]
    return (optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean() + 0.5 * l2 * jnp.sum(params[0] ** 2))

  grad_w, grad_b = jax.grad(objective)((w, b))
  assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
  np.testing.assert_allclose(loss, objective((w, b)), rtol=1e-5)
  # A worse point for comparison: the fit did minimise.
  assert objective((w * 0.5, b)) > loss + 1e-3


def test_fit_does_not_depend_on_how_examples_spread_over_devices():
  features, labels = _problem()
  four = _fit(_shard(features, labels, 4), 1e-3, jax.local_devices())
  one = _fit(_shard(features, labels, 1), 1e-3, jax.local_devices()[:1])
  for a, b in zip(four[:2], one[:2]):
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_folded_classifier_gives_the_same_logits_on_raw_embeddings():
  features, labels = _problem()
  w, b, _, moments = _fit(_shard(features, labels, 4), 1e-2,
                          jax.local_devices())
  standardised = ((features - moments.mean) * moments.inverse_std) @ w + b
  folded = feature_probe.fold_standardisation(w, b, moments)
  np.testing.assert_allclose(features @ folded['w'] + folded['b'],
                             standardised, rtol=1e-4, atol=1e-4)


def test_counts_cover_real_examples_only():
  features, labels = _problem()
  split = _shard(features, labels, 4)
  w, b, _, moments = _fit(split, 1e-2, jax.local_devices())
  replicated = parallel.replicate((w, b, moments))
  counts = parallel.first_replica(jax.pmap(
      feature_probe.make_count_fn(), axis_name='i')(*replicated[:2], *split,
                                                     replicated[2]))
  logits = ((features - moments.mean) * moments.inverse_std) @ w + b
  assert counts['count'] == len(labels)
  assert counts['top1'] == np.sum(np.argmax(logits, 1) == labels)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert counts['top5'] == np.sum(top5 == labels[:, None])
