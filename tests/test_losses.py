"""Golden values for BYOL's loss and the probe's metrics."""

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses


def test_regression_loss_golden_value():
  # Orthogonal unit directions: |a - b|^2 = 2; identical: 0; opposite: 4.
  prediction = jnp.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  target = jnp.array([[0.0, 5.0], [0.0, 7.0], [-2.0, -2.0]])
  np.testing.assert_allclose(losses.regression_loss(prediction, target),
                             [2.0, 0.0, 4.0], atol=1e-6)


def test_byol_loss_sums_both_view_orders():
  p1 = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  p2 = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  z1 = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
  z2 = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  # Direction p1 -> z2: [2, 0]; direction p2 -> z1: [2, 4].
  # Per example [4, 4]; batch mean 4. Averaging the two directions would
  # give 2: the pitfall this pins down.
  np.testing.assert_allclose(losses.byol_loss(p1, p2, z1, z2), 4.0, atol=1e-6)


def test_byol_loss_hand_computed_random_case():
  rng = np.random.default_rng(0)
  p1, p2, z1, z2 = (rng.normal(size=(5, 8)).astype(np.float32)
                    for _ in range(4))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  expected = np.mean(np.sum((unit(p1) - unit(z2))**2, -1) +
                     np.sum((unit(p2) - unit(z1))**2, -1))
  np.testing.assert_allclose(losses.byol_loss(p1, p2, z1, z2), expected,
                             rtol=1e-5)


def test_no_gradient_reaches_target_projections():
  rng = np.random.default_rng(1)
  args = [jnp.asarray(rng.normal(size=(4, 6)), jnp.float32) for _ in range(4)]
  grads = jax.grad(lambda *a: losses.byol_loss(*a), argnums=(0, 1, 2, 3))(*args)
  assert np.abs(grads[0]).sum() > 0 and np.abs(grads[1]).sum() > 0
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


def test_l2_normalize_handles_zero_vector():
  out = losses.l2_normalize(jnp.zeros((1, 3)))
  assert np.all(np.isfinite(out))


def test_cross_entropy_and_topk():
  logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
  labels = jnp.array([0, 1])
  expected_ce = -np.log(np.exp(logits) / np.exp(logits).sum(-1,
                                                            keepdims=True))
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                             [expected_ce[0, 0], expected_ce[1, 1]], rtol=1e-6)
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [1, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [1, 1])
  # k larger than the number of classes counts everything as correct.
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 5), [1, 1])
