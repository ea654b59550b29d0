"""DeepMind's `.pkl` checkpoints: safe loading, exact mapping, use end to end.

The checkpoints here are written in the reference's structure: a dict of
`experiment_state` (`byol.byol_experiment._ByolExperimentState`), `step` and
`rng`, with the LARS state of `byol.utils.optimizers` and optax NamedTuples.
Those classes are faked with the reference's module and class names (fake
modules in `sys.modules` while pickling), so the files name exactly the
globals a reference checkpoint names — once as `pickle` writes them, once as
dill 0.3 does (`dill._dill._create_namedtuple`, Haiku's `FlatMapping`). The
weights come from the reference's construction of a 1/8-width ResNet-18
(`tests.test_networks._ReferenceTorso`, built on Haiku's own blocks).
"""

import collections
import os
import pickle
import subprocess
import sys
import types

import haiku as hk
import jax
import numpy as np
import optax
import pytest

from byol_jax import augment
from byol_jax import byol
from byol_jax import checkpoint
from byol_jax import conv
from byol_jax import linear_eval
from byol_jax import reference_checkpoint
from byol_jax import train_loop
from tests import tiny
from tests.test_data_fashion_mnist import write_fashion_mnist
from tests.test_networks import BN
from tests.test_networks import _ReferenceTorso

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
NUM_TEST = 10
SIZE = 16
REFERENCE_STEP = 1234


def _config():
  """Our pretraining config of the reference-shaped net (standard stem)."""
  config = tiny.pretrain_config()
  config.model.encoder.small_image_stem = False
  return config


class _ReferenceMLP(hk.Module):
  """The reference's MLP (byol/utils/networks.py): layers made in __call__."""

  def __init__(self, name, hidden_size, output_size):
    super().__init__(name=name)
    self._hidden_size, self._output_size = hidden_size, output_size

  def __call__(self, x, is_training):
    x = hk.Linear(self._hidden_size, with_bias=True)(x)
    x = jax.nn.relu(hk.BatchNorm(**BN)(x, is_training=is_training))
    return hk.Linear(self._output_size, with_bias=False)(x)


def _reference_forward(images, is_training):
  """The reference's `_forward` for one view, with its module names."""
  model = _config().model
  net = _ReferenceTorso(blocks=(2, 2, 2, 2), channels=(8, 16, 32, 64),
                        bottleneck=False, resnet_v2=False, name='res_net18',
                        stem_channels=8)
  embedding = net(augment.normalize_images(images), is_training)
  projection = _ReferenceMLP('projector', model.projector_hidden_size,
                             model.projector_output_size)(embedding,
                                                          is_training)
  prediction = _ReferenceMLP('predictor', model.predictor_hidden_size,
                             model.projector_output_size)(projection,
                                                          is_training)
  logits = hk.Linear(NUM_CLASSES, name='classifier')(
      jax.lax.stop_gradient(embedding))
  return dict(embedding=embedding, projection=projection,
              prediction=prediction, logits=logits)


REFERENCE = hk.without_apply_rng(hk.transform_with_state(_reference_forward))


def _images(seed=0, n=4):
  return jax.random.uniform(jax.random.key(seed, impl='rbg'),
                            (n, SIZE, SIZE, 3))


@pytest.fixture(scope='module')
def weights():
  """Reference-built online/target params and state, LARS momentum (numpy)."""
  key = jax.random.key(0, impl='rbg')
  online_params, online_state = REFERENCE.init(key, _images(), True)
  # Moved batch-norm statistics, so that state mapping errors would show.
  _, online_state = REFERENCE.apply(online_params, online_state, _images(1),
                                    True)
  target_params, target_state = REFERENCE.init(
      jax.random.fold_in(key, 1), _images(), True)
  mu = jax.tree.map(lambda p: 0.01 * p + 0.5, online_params)
  return jax.tree.map(np.asarray, dict(
      online_params=online_params, online_state=online_state,
      target_params=target_params, target_state=target_state, mu=mu))


class _FakeModules:
  """Installs the reference's classes under their module paths for pickle."""

  def __init__(self, monkeypatch):
    self._monkeypatch = monkeypatch
    self.classes = {}

  def define(self, module, name, value):
    parts = module.split('.')
    for i in range(1, len(parts) + 1):  # pickle imports the parents too
      package = '.'.join(parts[:i])
      if package not in sys.modules:
        self._monkeypatch.setitem(sys.modules, package,
                                  types.ModuleType(package))
    value.__module__, value.__qualname__ = module, name
    self._monkeypatch.setattr(sys.modules[module], name, value, raising=False)
    return value

  def named_tuple(self, module, name, fields):
    cls = self.define(module, name, collections.namedtuple(name, fields))
    self.classes[cls] = (name, tuple(fields), module)
    return cls


def _reference_pickle(weights, monkeypatch, path, dill_style=False):
  """Writes `weights` as the reference's `checkpointing.py` would."""
  fake = _FakeModules(monkeypatch)
  state_cls = fake.named_tuple(
      'byol.byol_experiment', '_ByolExperimentState',
      ['online_params', 'target_params', 'online_state', 'target_state',
       'opt_state'])
  weight_decay = fake.named_tuple('byol.utils.optimizers',
                                  'AddWeightDecayState', [])
  lars = fake.named_tuple('byol.utils.optimizers', 'ScaleByLarsState', ['mu'])
  scale = fake.named_tuple('optax._src.transform', 'ScaleState', [])
  wrap = dict
  if dill_style:
    create = fake.define('dill._dill', '_create_namedtuple',
                         lambda *args: None)
    flat_mapping_fn = fake.define('haiku._src.data_structures', 'FlatMapping',
                                  lambda data: None)

    class FlatMapping(dict):
      def __reduce__(self):
        return flat_mapping_fn, (dict(self),)

    def wrap(tree):  # Haiku <= 0.0.5 returned FlatMapping params and state.
      return FlatMapping({k: FlatMapping(v) for k, v in tree.items()})

    class Pickler(pickle.Pickler):
      def reducer_override(self, obj):
        if isinstance(obj, type) and obj in fake.classes:
          return create, fake.classes[obj]
        return NotImplemented
  else:
    Pickler = pickle.Pickler

  data = dict(
      experiment_state=state_cls(
          online_params=wrap(weights['online_params']),
          target_params=wrap(weights['target_params']),
          online_state=wrap(weights['online_state']),
          target_state=wrap(weights['target_state']),
          opt_state=(weight_decay(), lars(mu=wrap(weights['mu'])), scale())),
      step=REFERENCE_STEP,
      rng=np.array([0, 42], np.uint32))
  with open(path, 'wb') as f:
    Pickler(f, protocol=2).dump(data)
  return str(path)


@pytest.fixture
def reference_pkl(weights, monkeypatch, tmp_path):
  return _reference_pickle(weights, monkeypatch, tmp_path / 'pretrain.pkl')


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('dill_style', [False, True])
def test_loads_as_plain_containers(weights, monkeypatch, tmp_path,
                                   dill_style):
  path = _reference_pickle(weights, monkeypatch, tmp_path / 'p.pkl',
                           dill_style)
  monkeypatch.undo()  # The reference's modules are gone again when loading.
  assert 'byol' not in sys.modules
  data = reference_checkpoint.load_pickle(path)
  assert data['step'] == REFERENCE_STEP
  np.testing.assert_array_equal(data['rng'], [0, 42])
  state = data['experiment_state']
  assert type(state) is dict
  for field in ('online_params', 'target_params', 'online_state',
                'target_state'):
    assert type(state[field]) is dict
    _assert_trees_equal(state[field], weights[field])
  assert state['opt_state'][0] == {} and state['opt_state'][2] == {}
  _assert_trees_equal(state['opt_state'][1]['mu'], weights['mu'])


def test_converted_keys_fill_our_train_state_exactly(weights, reference_pkl):
  arrays, metadata = reference_checkpoint.load_arrays(reference_pkl)
  assert metadata['reference_step'] == REFERENCE_STEP
  assert metadata['encoder'] == 'res_net18'
  assert metadata['width_multiplier'] == 0.125
  state = byol.init_state(_config(), NUM_CLASSES, (SIZE, SIZE, 3))
  template = state._replace(step=None, rng=None)  # Not carried over.
  restored = checkpoint.restore_into(template, arrays, reference_pkl)
  # Every array of the file lands somewhere, and nowhere else.
  assert len(arrays) == len(jax.tree.leaves(template))
  for field in ('online_params', 'target_params', 'online_state',
                'target_state'):
    _assert_trees_equal(getattr(restored, field), weights[field])
  # The reference's LARS momentum becomes our trace (same recursion).
  traces = [s for s in restored.opt_state if isinstance(s, optax.TraceState)]
  _assert_trees_equal(traces[0].trace, weights['mu'])


@pytest.mark.parametrize('is_training', [False, True])
def test_forward_equals_the_same_weights_placed_directly(
    weights, reference_pkl, is_training, monkeypatch):
  # XLA's convolution on both sides, so outputs compare bitwise-close; the
  # CPU patches path is checked against it in test_conv.py.
  monkeypatch.setenv(conv.IMPLEMENTATION_ENV, 'xla')
  state = train_loop.warm_start(
      byol.init_state(_config(), NUM_CLASSES, (SIZE, SIZE, 3)),
      reference_pkl, with_opt_state=False)
  ours = byol.make_network(_config().model, NUM_CLASSES,
                           cross_replica_axis=None)
  images = _images(2)
  out, new_state = ours.apply(state.online_params, state.online_state, images,
                              is_training)
  ref_out, ref_new_state = REFERENCE.apply(
      weights['online_params'], weights['online_state'], images, is_training)
  assert set(out) == set(ref_out)
  for name in out:
    np.testing.assert_allclose(out[name], ref_out[name], rtol=1e-6,
                               atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-6),
               new_state, ref_new_state)


def test_warm_start_keeps_step_and_optionally_takes_momentum(weights,
                                                             reference_pkl):
  fresh = byol.init_state(_config(), NUM_CLASSES, (SIZE, SIZE, 3))
  warm = train_loop.warm_start(fresh, reference_pkl, with_opt_state=False)
  assert int(warm.step) == 0
  _assert_trees_equal(warm.rng, fresh.rng)
  _assert_trees_equal(warm.target_params, weights['target_params'])
  _assert_trees_equal(warm.target_state, weights['target_state'])
  _assert_trees_equal(warm.opt_state, fresh.opt_state)
  with_momentum = train_loop.warm_start(fresh, reference_pkl,
                                        with_opt_state=True)
  trace = next(s for s in with_momentum.opt_state
               if isinstance(s, optax.TraceState)).trace
  _assert_trees_equal(trace, weights['mu'])


def test_other_architecture_names_the_parameter_and_both_shapes(
    reference_pkl):
  config = _config()
  config.model.encoder.width_multiplier = 0.25
  state = byol.init_state(config, NUM_CLASSES, (SIZE, SIZE, 3))
  # The first differing parameter in key order: the probe sees the wider
  # embedding (64 -> 128 features).
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"'online_params/classifier/w' has shape "
                     r"\(64, 10\) in the checkpoint but \(128, 10\) in the "
                     "model"):
    train_loop.warm_start(state, reference_pkl, with_opt_state=False)
  # Linear evaluation loads the encoder only; its first key differs.
  eval_config = tiny.linear_eval_config()
  eval_config.model.encoder.update(small_image_stem=False,
                                   width_multiplier=0.25)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"'online_params/res_net18/~/block_group_0/~/"
                     r"block_0/~/batchnorm_0/offset' has shape "
                     r"\(1, 1, 1, 8\) in the checkpoint but \(1, 1, 1, 16\) "
                     "in the model"):
    linear_eval.load_pretrained_encoder(
        linear_eval.init_state(eval_config, NUM_CLASSES), reference_pkl)
  config.model.encoder.update(width_multiplier=0.125, depth=34)
  state = byol.init_state(config, NUM_CLASSES, (SIZE, SIZE, 3))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"no array 'online_params/res_net34/.*which has "
                     r"'online_params/res_net18/"):
    train_loop.warm_start(state, reference_pkl, with_opt_state=False)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _malicious_pickle(tmp_path, payload):
  path = tmp_path / 'evil.pkl'
  path.write_bytes(pickle.dumps(dict(experiment_state=payload, step=0),
                                protocol=2))
  return str(path)


def test_pickle_that_would_run_a_command_is_refused(tmp_path):
  marker = tmp_path / 'ran'
  path = _malicious_pickle(tmp_path, _Evil(marker))
  assert b'system' in open(path, 'rb').read()  # The payload is in the file.
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'refers to the global (posix|nt)\.system.*'
                     'refusing'):
    reference_checkpoint.load_pickle(path)
  assert not marker.exists()
  # The same through the command line: one line, exit status 2, nothing ran.
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.convert_reference',
       f'--input={path}', f'--output={tmp_path / "out.npz"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().count('\n') == 0
  assert result.stderr.startswith('error: checkpoint ')
  assert 'system' in result.stderr
  assert not marker.exists()
  assert not (tmp_path / 'out.npz').exists()


# A NamedTuple the reference does not have (pickled by reference to here).
_Other = collections.namedtuple('_Other', 'x')


@pytest.mark.parametrize('payload', [eval, getattr, np.load, pickle.loads,
                                     _Other(1)])
def test_only_the_known_globals_are_accepted(tmp_path, payload):
  with pytest.raises(checkpoint.CheckpointError, match='refers to the global'):
    reference_checkpoint.load_pickle(_malicious_pickle(tmp_path, payload))


def test_dill_namedtuple_of_an_unknown_class_is_refused(tmp_path,
                                                        monkeypatch):
  fake = _FakeModules(monkeypatch)
  create = fake.define('dill._dill', '_create_namedtuple', lambda *a: None)
  other = fake.named_tuple('byol.byol_experiment', 'Sneaky', ['x'])

  class Pickler(pickle.Pickler):
    def reducer_override(self, obj):
      if obj is other:
        return create, fake.classes[obj]
      return NotImplemented

  path = tmp_path / 'p.pkl'
  with open(path, 'wb') as f:
    Pickler(f, protocol=2).dump(other(1))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"byol\.byol_experiment\.Sneaky\('x',\)"):
    reference_checkpoint.load_pickle(str(path))


def test_truncated_or_foreign_pickles_are_clear_errors(reference_pkl,
                                                       tmp_path):
  data = open(reference_pkl, 'rb').read()
  truncated = tmp_path / 'truncated.pkl'
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(checkpoint.CheckpointError, match='corrupt'):
    reference_checkpoint.load_pickle(str(truncated))
  foreign = tmp_path / 'foreign.pkl'
  foreign.write_bytes(pickle.dumps({'params': {}}, protocol=2))
  with pytest.raises(checkpoint.CheckpointError, match='no experiment_state'):
    reference_checkpoint.load_pickle(str(foreign))
  with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
    reference_checkpoint.load_pickle(str(tmp_path / 'missing.pkl'))


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  source = str(tmp_path_factory.mktemp('source'))
  write_fashion_mnist(source, num_train=32, num_test=NUM_TEST)
  return dict(data_dir=str(tmp_path_factory.mktemp('tfds')),
              fashion_mnist_dir=source)


def _linear_eval_config(dirs, checkpoint_path):
  config = tiny.linear_eval_config()
  config.model.encoder.small_image_stem = False
  config.dataset.update(data_dir=dirs['data_dir'],
                        fashion_mnist_dir=dirs['fashion_mnist_dir'])
  config.update(checkpoint=checkpoint_path)
  config.training.max_steps = 2
  config.eval.global_batch_size = 8
  config.logging.log_every_steps = 1
  return config


def test_convert_then_linear_eval_of_pkl_and_npz_agree(dirs, weights,
                                                       reference_pkl,
                                                       tmp_path):
  npz = tmp_path / 'converted.npz'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.convert_reference',
       f'--input={reference_pkl}', f'--output={npz}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'converted {reference_pkl} (reference '
                                  f'step {REFERENCE_STEP}, res_net18 width '
                                  '0.125x')
  with np.load(npz, allow_pickle=False) as data:  # Readable without byol_jax.
    np.testing.assert_array_equal(
        data['online_params/res_net18/~/initial_conv/w'],
        weights['online_params']['res_net18/~/initial_conv']['w'])

  config = _linear_eval_config(dirs, reference_pkl)
  state = linear_eval.init_state(config, NUM_CLASSES)
  from_pkl = linear_eval.load_pretrained_encoder(state, reference_pkl)
  from_npz = linear_eval.load_pretrained_encoder(state, str(npz))
  _assert_trees_equal(from_pkl, from_npz)
  encoder = byol.encoder_subtree(from_pkl.params)
  _assert_trees_equal(encoder, byol.encoder_subtree(weights['online_params']))

  results = {}
  for source in (reference_pkl, str(npz)):
    results[source] = train_loop.linear_evaluation(
        _linear_eval_config(dirs, source),
        str(tmp_path / f'eval_{os.path.basename(source)}'))
    assert results[source]['encoder'] == source
    assert results[source]['num_examples'] == NUM_TEST
  # Same weights, same data, same seed: the same classifier and results.
  assert results[reference_pkl]['top1'] == results[str(npz)]['top1']
  assert results[reference_pkl]['train_loss'] == results[str(npz)][
      'train_loss']


def test_pretraining_warm_starts_from_a_pkl(dirs, weights, reference_pkl,
                                            tmp_path, capsys):
  config = _config()
  config.dataset.update(data_dir=dirs['data_dir'],
                        fashion_mnist_dir=dirs['fashion_mnist_dir'])
  config.update(init_from=reference_pkl)
  config.training.max_steps = 1
  results = train_loop.pretrain(config, str(tmp_path))
  assert results['step'] == 1
  assert f'warm start from {reference_pkl}' in capsys.readouterr().out
  arrays, _ = checkpoint.load_arrays(
      checkpoint.latest_path(str(tmp_path / 'checkpoints')))
  key = 'target_params/res_net18/~/initial_conv/w'
  fresh = byol.init_state(config, NUM_CLASSES, (SIZE, SIZE, 3))
  warm = weights['target_params']['res_net18/~/initial_conv']['w']
  cold = fresh.target_params['res_net18/~/initial_conv']['w']
  # One EMA step (τ = 0.99) from the file's target, far from a fresh init's.
  assert (np.abs(arrays[key] - warm).max() <
          0.1 * np.abs(np.asarray(cold) - warm).max())
