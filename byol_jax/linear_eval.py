"""Linear evaluation (frozen encoder) and fine-tuning of a pretrained encoder.

The encoder comes from a BYOL checkpoint's *online* network (or a random
initialisation, for the baseline); a linear classifier is trained on top with
SGD + Nesterov momentum and a cosine learning rate, and evaluated on every
example of the test split exactly once (padded batches with a mask).
"""

from typing import Any, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from byol_jax import augment
from byol_jax import byol
from byol_jax import checkpoint
from byol_jax import losses
from byol_jax import networks
from byol_jax import optim
from byol_jax import reference_checkpoint

AXIS_NAME = byol.AXIS_NAME


class EvalState(NamedTuple):
  """State of a linear-evaluation run (one pytree, checkpointed as a unit).

  Attributes:
    step: int32 scalar, updates applied.
    rng: uint32[4] raw `rbg` key data (reserved for stochastic layers; unused by
      the frozen encoder, kept so fine-tuning runs resume exactly).
    params: Haiku params of the encoder and the `classifier` Linear.
    state: BatchNorm statistics of the encoder.
    opt_state: SGD momentum of the trained parameters.
  """
  step: jax.Array
  rng: jax.Array
  params: hk.Params
  state: hk.State
  opt_state: optax.OptState


def encode(model_config: ml_collections.ConfigDict, images: jax.Array,
           is_training: bool, cross_replica_axis: str | None) -> jax.Array:
  """Inside a Haiku transform: f32[B,H,W,3] in [0,1] → embeddings [B, E].

  The embeddings are in the model's compute dtype.
  """
  bn = byol.bn_config(model_config, cross_replica_axis)
  encoder = networks.make_encoder(bn_config=bn, **model_config.encoder)
  with networks.compute_precision(model_config.compute_dtype, type(encoder)):
    return encoder(augment.normalize_images(images), is_training)


def make_network(model_config: ml_collections.ConfigDict, num_classes: int,
                 cross_replica_axis: str | None) -> hk.TransformedWithState:
  """Encoder → `classifier` Linear; images f32[B,H,W,3] in [0,1] → logits."""
  def forward(images: jax.Array, is_training: bool) -> jax.Array:
    embedding = encode(model_config, images, is_training, cross_replica_axis)
    return hk.Linear(num_classes, name='classifier')(embedding)
  return hk.without_apply_rng(hk.transform_with_state(forward))


def is_classifier(module_name: str, name: str, value: Any) -> bool:
  del name, value
  return module_name == 'classifier'


def _optimizer(config: ml_collections.ConfigDict,
               learning_rate: float | jax.Array) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum; its state does not depend on the lr."""
  return optax.sgd(learning_rate, momentum=config.optimizer.momentum,
                   nesterov=config.optimizer.nesterov)


def init_state(config: ml_collections.ConfigDict, num_classes: int) -> EvalState:
  """Randomly initialised encoder and classifier (host arrays)."""
  size = config.dataset.image_size
  network = make_network(config.model, num_classes, cross_replica_axis=None)
  init_key, run_key = jax.random.split(
      jax.random.key(config.seed, impl=byol.PRNG_IMPL))

  def _init():
    params, state = network.init(
        init_key, jnp.zeros((2, size, size, 3), jnp.float32), True)
    trainable = params if config.finetune else hk.data_structures.filter(
        is_classifier, params)
    return EvalState(step=jnp.zeros((), jnp.int32),
                     rng=jax.random.key_data(run_key), params=params,
                     state=state, opt_state=_optimizer(config, 0.0).init(trainable))
  return byol.compile_initializer(_init)()


def load_pretrained_encoder(state: EvalState, path: str) -> EvalState:
  """Replaces the encoder's params and BatchNorm state with a checkpoint's.

  Reads the *online* network of a byol_jax pretraining checkpoint (`.npz`) or
  of one of DeepMind's reference checkpoints (`.pkl`, loaded without running
  code from it); the classifier stays as initialised.

  Raises:
    checkpoint.CheckpointError: missing/corrupt file, a linear evaluation's
      checkpoint, a pickle that names anything but the reference's classes,
      or another architecture (naming the first differing parameter and both
      shapes).
  """
  arrays, _ = reference_checkpoint.load_pretraining(path)
  encoder_params, classifier = hk.data_structures.partition(
      lambda m, n, v: not is_classifier(m, n, v), state.params)
  encoder_params = checkpoint.restore_into(encoder_params, arrays, path,
                                           prefix='online_params')
  encoder_state = checkpoint.restore_into(state.state, arrays, path,
                                          prefix='online_state')
  return state._replace(
      params=hk.data_structures.merge(encoder_params, classifier),
      state=encoder_state)


def make_train_step(config: ml_collections.ConfigDict, num_classes: int,
                    total_steps: int):
  """Returns `train_step(state, batch) -> (state, metrics)` to pmap on 'i'.

  `batch`: per device `images` uint8[B,H,W,3], `labels` int32[B]. With
  `config.finetune` False the encoder is frozen (inference-mode BatchNorm,
  no gradient); otherwise it trains with cross-replica BatchNorm.
  """
  network = make_network(config.model, num_classes, AXIS_NAME)
  finetune = config.finetune

  def train_step(state: EvalState, batch: Mapping[str, jax.Array]):
    images = batch['images'].astype(jnp.float32) / 255.0
    labels = batch['labels']
    if finetune:
      trainable, frozen = state.params, {}
    else:
      trainable, frozen = hk.data_structures.partition(
          is_classifier, state.params)

    def loss_fn(trainable_params):
      params = hk.data_structures.merge(frozen, trainable_params)
      logits, new_state = network.apply(params, state.state, images, finetune)
      loss = jnp.mean(losses.softmax_cross_entropy(logits, labels))
      return loss, (new_state, logits)

    (loss, (new_bn_state, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(trainable)
    grads = jax.lax.pmean(grads, AXIS_NAME)
    learning_rate = optim.learning_rate_schedule(
        state.step, base_learning_rate=config.optimizer.base_learning_rate,
        global_batch_size=config.training.global_batch_size,
        warmup_steps=0, total_steps=total_steps)
    optimizer = _optimizer(config, learning_rate)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = jax.lax.pmean(
        dict(loss=loss,
             top1_accuracy=jnp.mean(losses.topk_correct(logits, labels, 1))),
        AXIS_NAME)
    metrics['learning_rate'] = learning_rate
    new_state = state._replace(
        step=state.step + 1,
        params=hk.data_structures.merge(frozen, trainable),
        state=new_bn_state, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(config: ml_collections.ConfigDict, num_classes: int):
  """Returns `eval_step(state, batch) -> counts`, to pmap on 'i'.

  `batch`: per device `images` uint8[B,H,W,3], `labels` int32[B], `mask`
  bool[B] (False on padding). Returns int32 scalars summed over devices:
  `top1`, `top5` (correct predictions) and `count` (real examples).
  """
  network = make_network(config.model, num_classes, AXIS_NAME)

  def eval_step(state: EvalState, batch: Mapping[str, jax.Array]):
    images = batch['images'].astype(jnp.float32) / 255.0
    logits, _ = network.apply(state.params, state.state, images, False)
    return jax.lax.psum(
        losses.masked_topk_counts(logits, batch['labels'], batch['mask']),
        AXIS_NAME)

  return eval_step


def evaluate(eval_step, replicated_state: EvalState, batches) -> dict[str, Any]:
  """Runs `eval_step` over all `batches`; returns top1/top5 and num_examples.

  Counts are summed in int64 on the host so large splits stay exact.
  """
  totals = dict(top1=0, top5=0, count=0)
  for batch in batches:
    counts = eval_step(replicated_state, batch)
    for name in totals:
      totals[name] += int(np.asarray(counts[name].addressable_shards[0].data)
                          .reshape(-1)[0])
  count = totals['count']
  return dict(top1=totals['top1'] / max(count, 1),
              top5=totals['top5'] / max(count, 1), num_examples=count)
