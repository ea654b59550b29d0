"""LARS as in the BYOL reference, and the learning-rate and τ schedules.

All three are pure functions of the step so that the compiled update derives
them from `state.step` and nothing is sent from the host each step.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import optax


def exclude_bias_and_norm(params: hk.Params) -> hk.Params:
  """Mask that is False for biases and normalisation parameters.

  Mirrors the reference's filter: a parameter named `b`, or any parameter of a
  module whose name contains `norm` (Haiku's `batchnorm`/`batch_norm`), gets
  neither weight decay nor the LARS trust ratio.

  Args:
    params: a Haiku parameter mapping {module_name: {param_name: array}}.

  Returns:
    The same structure with a Python bool per leaf.
  """
  return hk.data_structures.map(
      lambda module_name, name, _: not (name == 'b' or 'norm' in module_name),
      params)


def lars(learning_rate: float | jax.Array,
         weight_decay: float = 0.0,
         momentum: float = 0.9,
         eta: float = 1e-3) -> optax.GradientTransformation:
  """LARS in the reference's order, built from optax parts.

  update = -lr · m, where m ← momentum · m + trust(g + wd · p); trust scales
  each tensor by η‖p‖/‖g + wd·p‖ (1 where either norm is 0). Biases and
  BatchNorm parameters are masked out of both the weight decay and the trust
  ratio. Unlike `optax.lars`, the learning rate multiplies *after* the momentum
  accumulation, so a changing lr does not get baked into the momentum buffer.

  Args:
    learning_rate: this step's learning rate (may be a traced scalar); the
      optimizer state does not depend on it, so `lars(0.).init` builds it.
    weight_decay: L2 coefficient added to the gradient.
    momentum: heavy-ball coefficient.
    eta: LARS trust coefficient.

  Returns:
    An optax.GradientTransformation whose updates are to be added to params.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=exclude_bias_and_norm),
      optax.masked(
          optax.scale_by_trust_ratio(
              min_norm=0.0, trust_coefficient=eta, eps=0.0),
          exclude_bias_and_norm),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate),
  )


def learning_rate_schedule(step: jax.Array, *, base_learning_rate: float,
                           global_batch_size: int, warmup_steps: int,
                           total_steps: int) -> jax.Array:
  """Linear warm-up to base × batch/256, then cosine decay to 0 at the end.

  Args:
    step: int scalar, the number of updates done so far.
    base_learning_rate: lr for a batch of 256.
    global_batch_size: images per step over all devices.
    warmup_steps: steps of linear warm-up from 0.
    total_steps: the run's length; the cosine reaches 0 there and stays.

  Returns:
    f32 scalar.
  """
  peak = base_learning_rate * global_batch_size / 256.0
  step = jnp.asarray(step, jnp.float32)
  warmup = peak * step / max(warmup_steps, 1)
  decay_steps = max(total_steps - warmup_steps, 1)
  cosine = _cosine_decay(step - warmup_steps, decay_steps) * peak
  return jnp.where(step < warmup_steps, warmup, cosine)


def target_ema_schedule(step: jax.Array, *, base_ema: float,
                        total_steps: int) -> jax.Array:
  """τ = 1 − (1 − τ_base)(cos(π·k/K) + 1)/2 with k clamped to K.

  Args:
    step: int scalar k.
    base_ema: τ_base, the value at step 0.
    total_steps: K; τ reaches 1 there and stays.

  Returns:
    f32 scalar in [τ_base, 1].
  """
  step = jnp.asarray(step, jnp.float32)
  return 1.0 - (1.0 - base_ema) * _cosine_decay(step, max(total_steps, 1))


def _cosine_decay(step: jax.Array, decay_steps: int) -> jax.Array:
  """(cos(π·min(step, decay_steps)/decay_steps) + 1)/2: from 1 down to 0."""
  progress = jnp.minimum(step, decay_steps) / decay_steps
  return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
