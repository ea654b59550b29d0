"""Linear evaluation on precomputed features: the paper's transfer protocol.

For its transfer experiments BYOL (Grill et al. 2020, appendix on linear
evaluation on other datasets, following SimCLR) embeds every image once with
the frozen encoder, without augmentation, and fits an ℓ2-regularised
multinomial logistic regression with L-BFGS, choosing the regularisation on a
validation split. This module does the maths of that protocol:

  * `make_embed_fn`: images → embeddings of the frozen encoder.
  * `feature_moments`: mean and standard deviation of the training features,
    which standardise them (the fit is then well conditioned for every λ).
  * `make_fit_fn`: L-BFGS on  mean cross-entropy + λ/2 · ||W||²  (bias not
    regularised), warm-started from given weights, so a grid of λ from large
    to small follows the regularisation path.
  * `make_count_fn`: top-1/top-5 counts of a classifier on features.
  * `fold_standardisation`: the fitted classifier rewritten for raw
    embeddings, so the test split runs through the same image → encoder →
    `classifier` network as the augmented protocol (linear_eval.py).

Every function here is meant for `jax.pmap(..., axis_name='i')`: each device
holds its shard of the features, padded, with a mask; sums run over all
devices of all processes, so every replica takes the same L-BFGS steps.
"""

from typing import Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

from byol_jax import byol
from byol_jax import linear_eval
from byol_jax import losses

AXIS_NAME = byol.AXIS_NAME


class Features(NamedTuple):
  """A split's embeddings, laid out for pmap.

  Attributes:
    features: f32[D, N, E], device d's N embeddings of E dimensions.
    labels: int32[D, N].
    mask: bool[D, N], False on padding.
  """
  features: jax.Array
  labels: jax.Array
  mask: jax.Array


class Moments(NamedTuple):
  """Per-dimension statistics of the training features, f32[E] each."""
  mean: jax.Array
  inverse_std: jax.Array


def make_embed_fn(model_config: ml_collections.ConfigDict):
  """Returns `embed(params, state, images) -> f32[B, E]` (inference mode).

  `images`: uint8[B, H, W, 3]; `params`/`state` may be a linear-evaluation
  state's (the `classifier` entries are not used).
  """
  def forward(images: jax.Array) -> jax.Array:
    return linear_eval.encode(model_config, images, is_training=False,
                              cross_replica_axis=None).astype(jnp.float32)
  network = hk.without_apply_rng(hk.transform_with_state(forward))

  def embed(params: hk.Params, state: hk.State, images: jax.Array):
    embeddings, _ = network.apply(params, state,
                                  images.astype(jnp.float32) / 255.0)
    return embeddings
  return embed


def _all_sum(x: jax.Array) -> jax.Array:
  """Sum over all devices, bitwise the same on every one of them.

  An all-reduce may add in a different order on each device; the L-BFGS
  line search branches on these sums, and devices that branched differently
  would wait for each other's collectives forever. So device 0's sum is
  broadcast by a second all-reduce, in which adding zeros is exact.
  """
  total = jax.lax.psum(x, AXIS_NAME)
  is_first = jax.lax.axis_index(AXIS_NAME) == 0
  return jax.lax.psum(jnp.where(is_first, total, jnp.zeros_like(total)),
                      AXIS_NAME)


@jax.custom_vjp
def _summed_over_devices(x: jax.Array) -> jax.Array:
  """`_all_sum` whose gradient reaches each device's own terms unchanged."""
  return _all_sum(x)


def _summed_over_devices_fwd(x):
  return _all_sum(x), None


def _summed_over_devices_bwd(_, cotangent):
  return (cotangent,)


_summed_over_devices.defvjp(_summed_over_devices_fwd,
                            _summed_over_devices_bwd)


@jax.custom_vjp
def _shared(params: Mapping[str, jax.Array]) -> Mapping[str, jax.Array]:
  """Marks replicated `params`: their gradient is summed over devices."""
  return params


def _shared_fwd(params):
  return params, None


def _shared_bwd(_, cotangents):
  return (jax.tree.map(_all_sum, cotangents),)


_shared.defvjp(_shared_fwd, _shared_bwd)


def _masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum over axis 0 of `values` where `mask`, over all devices."""
  weights = mask.astype(values.dtype).reshape(
      mask.shape + (1,) * (values.ndim - 1))
  return _summed_over_devices(jnp.sum(values * weights, axis=0))


def feature_moments(features: jax.Array, mask: jax.Array) -> Moments:
  """Mean and 1/std (floored at 1e-6 std) of f32[N, E] masked features."""
  count = _masked_sum(jnp.ones(mask.shape, jnp.float32), mask)
  mean = _masked_sum(features, mask) / count
  variance = _masked_sum(jnp.square(features - mean), mask) / count
  return Moments(mean=mean,
                 inverse_std=1.0 / jnp.maximum(jnp.sqrt(variance), 1e-6))


def make_fit_fn(num_iterations: int):
  """Returns `fit(w, b, features, labels, mask, moments, l2) -> (w, b, loss)`.

  Runs `num_iterations` L-BFGS steps (optax.lbfgs, zoom line search) from
  (w f32[E, C], b f32[C]) on standardised features f32[N, E]; `loss` is the
  final objective, mean cross-entropy + l2/2 · ||w||².
  """
  solver = optax.lbfgs()

  def fit(w, b, features, labels, mask, moments: Moments, l2):
    inputs = (features - moments.mean) * moments.inverse_std
    count = _masked_sum(jnp.ones(mask.shape, jnp.float32), mask)

    def objective(params: Mapping[str, jax.Array]) -> jax.Array:
      shared = _shared(params)
      logits = inputs @ shared['w'] + shared['b']
      cross_entropy = losses.softmax_cross_entropy(logits, labels)
      return (_masked_sum(cross_entropy, mask) / count +
              0.5 * l2 * jnp.sum(jnp.square(params['w'])))

    value_and_grad = optax.value_and_grad_from_state(objective)

    def iteration(_, carry):
      params, solver_state = carry
      value, grad = value_and_grad(params, state=solver_state)
      updates, solver_state = solver.update(
          grad, solver_state, params, value=value, grad=grad,
          value_fn=objective)
      return optax.apply_updates(params, updates), solver_state

    params = dict(w=w, b=b)
    params, _ = jax.lax.fori_loop(0, num_iterations, iteration,
                                  (params, solver.init(params)))
    return params['w'], params['b'], objective(params)
  return fit


def make_count_fn():
  """Returns `count(w, b, features, labels, mask, moments) -> counts`.

  counts: int32 scalars summed over devices, `top1`, `top5` (correct
  predictions) and `count` (real examples).
  """
  def count(w, b, features, labels, mask, moments: Moments):
    logits = ((features - moments.mean) * moments.inverse_std) @ w + b
    return jax.tree.map(_all_sum,
                        losses.masked_topk_counts(logits, labels, mask))
  return count


def fold_standardisation(w: jax.Array, b: jax.Array,
                         moments: Moments) -> dict[str, jax.Array]:
  """`classifier` params for raw embeddings: same logits as (w, b) on
  standardised ones. Returns {'w': f32[E, C], 'b': f32[C]}."""
  scaled = w * moments.inverse_std[:, None]
  return dict(w=scaled, b=b - moments.mean @ scaled)
