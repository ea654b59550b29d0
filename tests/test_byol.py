"""The pmapped BYOL update on 4 simulated devices: EMA, schedules, BatchNorm.

One short run (compiled once) is shared by every test of this module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import byol
from byol_jax import losses
from byol_jax import optim
from byol_jax import parallel
from tests import tiny

NUM_CLASSES = 10
NUM_STEPS = 3
SCHEDULES = byol.Schedules(global_batch_size=16, warmup_steps=1,
                           total_steps=4)


def _batch(seed, devices=4, per_device=4, size=16):
  rng = np.random.default_rng(seed)
  image = lambda: rng.integers(0, 256, (devices, per_device, size, size, 3),
                               dtype=np.uint8)
  return dict(view1=image(), view2=image(),
              labels=rng.integers(0, NUM_CLASSES, (devices, per_device),
                                  dtype=np.int32))


@pytest.fixture(scope='module')
def run():
  """States before/after each step (host copies), metrics, final replicas."""
  config = tiny.pretrain_config()
  state = byol.init_state(config, NUM_CLASSES, (16, 16, 3))
  update = jax.pmap(byol.make_update_fn(config, NUM_CLASSES, SCHEDULES),
                    axis_name='i', donate_argnums=0)
  replicated = parallel.replicate(state)
  states, metrics = [jax.device_get(state)], []
  for k in range(NUM_STEPS):
    replicated, step_metrics = update(replicated, _batch(k))
    states.append(parallel.first_replica(replicated))
    metrics.append(parallel.first_replica(step_metrics))
  return config, states, metrics, replicated


def test_step_counts_and_metrics(run):
  _, states, metrics, _ = run
  assert [int(s.step) for s in states] == list(range(NUM_STEPS + 1))
  for m in metrics:
    assert 0.0 <= m['repr_loss'] <= 8.0
    np.testing.assert_allclose(m['loss'], m['repr_loss'] + m['classif_loss'],
                               rtol=1e-6)
    assert 0.0 <= m['top1_accuracy'] <= m['top5_accuracy'] <= 1.0


def test_lr_and_tau_are_derived_from_the_step(run):
  config, _, metrics, _ = run
  peak = config.optimizer.base_learning_rate * 16 / 256
  # Step 0 is inside the 1-step warm-up (lr 0), step 1 is the peak, step 2
  # is on the cosine (total 4, so 1/3 of the way: peak·(1+cos(π/3))/2).
  expected_lr = [0.0, peak, peak * 0.75]
  for step, m in enumerate(metrics):
    np.testing.assert_allclose(m['learning_rate'], expected_lr[step],
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m['tau'], optim.target_ema_schedule(
        step, base_ema=config.training.base_target_ema, total_steps=4),
        rtol=1e-6)
  np.testing.assert_allclose(metrics[0]['tau'], config.training.base_target_ema)


def test_target_is_ema_of_the_updated_online_params(run):
  _, states, metrics, _ = run
  for step in range(NUM_STEPS):
    tau = float(metrics[step]['tau'])
    before, after = states[step], states[step + 1]
    # Exactly τ·target + (1 − τ)·online_new: any gradient reaching the
    # target parameters would break this equality.
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o,
                            before.target_params, after.online_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-7), after.target_params, expected)


def test_online_network_learns_once_lr_is_positive(run):
  _, states, _, _ = run
  # lr = 0 at step 0: nothing moves. Afterwards every parameter, the probe
  # included, changes.
  jax.tree.map(np.testing.assert_array_equal, states[1].online_params,
               states[0].online_params)
  changed = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(states[2].online_params),
      jax.tree.leaves(states[3].online_params))]
  assert all(changed)


def test_replicas_stay_identical_across_devices(run):
  _, _, _, replicated = run
  # Each device saw different images; cross-replica BatchNorm and pmean'd
  # gradients must keep statistics and parameters identical.
  for leaf in jax.tree.leaves((replicated.online_state,
                               replicated.target_state,
                               replicated.online_params)):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 4
    for shard in shards[1:]:
      np.testing.assert_allclose(shard, shards[0], rtol=1e-5, atol=1e-6)
  averages = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
      replicated.online_state)[0] if 'average' in jax.tree_util.keystr(path)]
  assert averages and any(np.abs(np.asarray(a)).max() > 0 for a in averages)


def test_target_batch_norm_follows_its_own_forward_and_probe_is_online(run):
  """Step 0 again, by hand: the target's BatchNorm state is that of the target
  network's training-mode forward on view 1, then view 2 (per view, synced
  over devices), and the probe's loss comes from the online encoder."""
  config, states, metrics, _ = run
  network = byol.make_network(config.model, NUM_CLASSES, byol.AXIS_NAME)

  def by_hand(state, batch):
    view1, view2 = byol.augment_views(config.augment, state, batch)
    _, per_view = network.apply(state.target_params, state.target_state,
                                view1, True)
    _, per_view = network.apply(state.target_params, per_view, view2, True)
    _, concatenated = network.apply(state.target_params, state.target_state,
                                    jnp.concatenate([view1, view2]), True)
    def probe_loss(params, bn_state):
      out, _ = network.apply(params, bn_state, view1, True)
      return jax.lax.pmean(jnp.mean(losses.softmax_cross_entropy(
          out['logits'], batch['labels'])), byol.AXIS_NAME)
    return (per_view, concatenated,
            probe_loss(state.online_params, state.online_state),
            probe_loss(state.target_params, state.target_state))

  per_view, concatenated, online_loss, target_loss = jax.pmap(
      by_hand, axis_name=byol.AXIS_NAME)(parallel.replicate(states[0]),
                                         _batch(0))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, states[1].target_state,
               parallel.first_replica(per_view))
  # One forward of both views together would give other statistics.
  assert not all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(
      jax.tree.leaves(states[1].target_state),
      jax.tree.leaves(parallel.first_replica(concatenated))))
  close(metrics[0]['classif_loss'], parallel.first_replica(online_loss))
  assert not np.isclose(metrics[0]['classif_loss'],
                        parallel.first_replica(target_loss), rtol=1e-4)


def test_both_views_in_one_apply_equal_two_applies():
  """`apply_per_view` (one vmapped apply) gives the outputs, BatchNorm state
  and gradients of the reference's two applies, view 1 then view 2, with
  BatchNorm synchronised over 4 devices, after a few updates of the state."""
  config = tiny.pretrain_config()
  network = byol.make_network(config.model, NUM_CLASSES, byol.AXIS_NAME)
  state = byol.init_state(config, NUM_CLASSES, (16, 16, 3))
  decay = config.model.bn_decay

  def loss(outputs1, outputs2, weights):
    return jnp.sum((outputs1['prediction'] - outputs2['projection'])**2 *
                   weights) + jnp.sum(outputs1['logits'])

  def one_apply(params, bn_state, views, weights):
    def loss_fn(p):
      out, new_state = byol.apply_per_view(network, p, bn_state, views, decay)
      return loss(jax.tree.map(lambda x: x[0], out),
                  jax.tree.map(lambda x: x[1], out), weights), (out, new_state)
    return jax.grad(loss_fn, has_aux=True)(params)

  def two_applies(params, bn_state, views, weights):
    def loss_fn(p):
      out1, new_state = network.apply(p, bn_state, views[0], True)
      out2, new_state = network.apply(p, new_state, views[1], True)
      stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), out1, out2)
      return loss(out1, out2, weights), (stacked, new_state)
    return jax.grad(loss_fn, has_aux=True)(params)

  def compare(actual, expected):
    # Float32 summation order differs (one batched convolution against two),
    # so errors are relative to each array's scale; in float64 the two agree
    # to 1e-14 of it (checked by hand).
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
      scale = max(float(np.abs(y).max()), 1e-6)
      assert float(np.abs(np.asarray(x) - y).max()) <= 1e-4 * scale

  params = parallel.replicate(state.online_params)
  bn_states = [parallel.replicate(state.online_state)] * 2
  rng = np.random.default_rng(0)
  for _ in range(3):
    views = rng.uniform(size=(4, 2, 4, 16, 16, 3)).astype(np.float32)
    weights = rng.normal(size=(4, 1, config.model.projector_output_size))
    results = [jax.pmap(fn, axis_name=byol.AXIS_NAME)(
        params, bn_state, views, weights.astype(np.float32))
               for fn, bn_state in zip((one_apply, two_applies), bn_states)]
    (grads, (out, new_state)), (ref_grads, (ref_out, ref_state)) = results
    compare(out, ref_out)
    compare(new_state, ref_state)
    compare(grads, ref_grads)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))
    bn_states = [new_state, ref_state]
  counters = [np.asarray(leaf) for path, leaf in
              jax.tree_util.tree_flatten_with_path(bn_states[0])[0]
              if 'counter' in jax.tree_util.keystr(path)]
  assert counters and all(np.all(c == 6) for c in counters)


def test_chaining_refuses_state_it_does_not_know():
  state = {'encoder/other': {'counter': jnp.zeros((), jnp.int32)}}
  per_view = {'encoder/other': {'counter': jnp.ones((2,), jnp.int32)}}
  with pytest.raises(ValueError, match="'encoder/other'.*moving averages"):
    byol.chain_moving_averages(state, per_view, 0.9)


def test_init_without_forward_trains_as_haikus_init():
  """The initialiser that skips the forward pass gives Haiku's parameters,
  and a training step from its all-zero BatchNorm state gives the same
  state and metrics as one from Haiku's own (dummy-batch) state."""
  config = tiny.pretrain_config()
  network = byol.make_network(config.model, NUM_CLASSES, None)
  key = jax.random.key(3, impl=byol.PRNG_IMPL)
  params, state = byol.init_without_forward(network, (16, 16, 3))(key)
  haiku_params, haiku_state = network.init(
      key, jnp.zeros((2, 16, 16, 3)), True)
  jax.tree.map(np.testing.assert_array_equal, params, haiku_params)
  assert jax.tree.structure(state) == jax.tree.structure(haiku_state)
  assert all(not np.any(x) for x in jax.tree.leaves(state))
  # Haiku's first `average`s are a dummy batch's statistics, not zeros.
  assert any(np.any(x) for x in jax.tree.leaves(haiku_state))

  fresh = byol.init_state(config, NUM_CLASSES, (16, 16, 3))
  with_haiku_state = fresh._replace(online_state=haiku_state,
                                    target_state=haiku_state)
  update = jax.pmap(byol.make_update_fn(config, NUM_CLASSES, SCHEDULES),
                    axis_name='i')
  batch = _batch(0)
  after, metrics = update(parallel.replicate(fresh), batch)
  haiku_after, haiku_metrics = update(parallel.replicate(with_haiku_state),
                                      batch)
  jax.tree.map(np.testing.assert_array_equal, after, haiku_after)
  jax.tree.map(np.testing.assert_array_equal, metrics, haiku_metrics)
