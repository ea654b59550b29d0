"""BYOL's regression loss and the classification metrics of the linear probe."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales `x` to unit L2 norm along `axis`; `eps` guards all-zero vectors."""
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, eps))


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Squared distance of the L2-normalised vectors, per example.

  Args:
    prediction: f32[B, D], the online network's prediction of one view.
    target: f32[B, D], the target network's projection of the other view.

  Returns:
    f32[B], in [0, 4]; equals 2 - 2 cos(prediction, target).
  """
  return jnp.sum(
      jnp.square(l2_normalize(prediction) - l2_normalize(target)), axis=-1)


def byol_loss(prediction_view1: jax.Array, prediction_view2: jax.Array,
              projection_view1: jax.Array,
              projection_view2: jax.Array) -> jax.Array:
  """BYOL's symmetrised loss: both view orders summed, then batch-averaged.

  The target projections are wrapped in `stop_gradient`: only the online
  network learns from this loss. Summing (not averaging) the two directions
  matters: it sets the loss scale that the paper's learning rates assume.

  Args:
    prediction_view1: f32[B, D], online prediction of view 1.
    prediction_view2: f32[B, D], online prediction of view 2.
    projection_view1: f32[B, D], target projection of view 1.
    projection_view2: f32[B, D], target projection of view 2.

  Returns:
    f32 scalar in [0, 8].
  """
  projection_view1 = jax.lax.stop_gradient(projection_view1)
  projection_view2 = jax.lax.stop_gradient(projection_view2)
  per_example = (regression_loss(prediction_view1, projection_view2) +
                 regression_loss(prediction_view2, projection_view1))
  return jnp.mean(per_example)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy. logits: f32[B, K]; labels: int[B] -> f32[B]."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Whether the label is among the `k` highest logits.

  Args:
    logits: f32[B, K].
    labels: int[B].
    k: how many top classes count as correct; clipped to K.

  Returns:
    f32[B] of 0.0 / 1.0.
  """
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = number of classes with a strictly larger logit; ties favour the
  # label, as `jax.lax.top_k` does for the lower class index most of the time.
  rank = jnp.sum(logits > label_logit, axis=-1)
  return (rank < k).astype(jnp.float32)


def masked_topk_counts(logits: jax.Array, labels: jax.Array,
                       mask: jax.Array) -> dict[str, jax.Array]:
  """This device's int32 counts: `top1`, `top5` correct and `count` real.

  Args:
    logits: f32[B, K].
    labels: int[B].
    mask: bool[B], False on padding (not counted).
  """
  weights = mask.astype(jnp.int32)
  return dict(
      top1=jnp.sum(topk_correct(logits, labels, 1).astype(jnp.int32) * weights),
      top5=jnp.sum(topk_correct(logits, labels, 5).astype(jnp.int32) * weights),
      count=jnp.sum(weights))
