"""Import of DeepMind's BYOL checkpoints (`.pkl`), without running their code.

The reference (`byol/utils/checkpointing.py`) saves, with `dill` and pickle
protocol 2, a dict of `experiment_state` (a `_ByolExperimentState` NamedTuple
of module `byol.byol_experiment`: online_params, target_params, online_state,
target_state, opt_state), `step` and `rng`, all arrays as numpy. Its Haiku
params and state are `{module path: {name: array}}`, possibly as Haiku's old
`FlatMapping`/`frozendict`; its optimizer state is the tuple of an optax chain
of `byol.utils.optimizers` and optax NamedTuples.

A plain `pickle.load` would call whatever the file names. Here a restricted
unpickler resolves only the globals in `_ALLOWED` below: numpy's array, scalar
and dtype reconstruction, builtin containers, Haiku's old mappings and the
NamedTuples above, each replaced by a stand-in that builds a plain `dict` (so
neither the reference, nor dill, nor Haiku or optax need be importable). Any
other global stops the load with a one-line `CheckpointError` naming it.
"""

import codecs
import collections
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from tensorflow import errors as tf_errors
from tensorflow.io import gfile

from byol_jax import checkpoint
from byol_jax import optim

_STATE_FIELDS = ('online_params', 'target_params', 'online_state',
                 'target_state', 'opt_state')

# NamedTuples a reference checkpoint may hold -> their fields. Old and new
# optax module paths are both listed: optax moved classes between releases.
_NAMED_TUPLES = {
    ('byol.byol_experiment', '_ByolExperimentState'): _STATE_FIELDS,
    ('byol.utils.optimizers', 'ScaleByLarsState'): ('mu',),
    ('byol.utils.optimizers', 'AddWeightDecayState'): (),
    ('optax._src.transform', 'ScaleState'): (),
    ('optax._src.transform', 'TraceState'): ('trace',),
    ('optax._src.transform', 'ScaleByScheduleState'): ('count',),
    ('optax._src.transform', 'ScaleByTrustRatioState'): (),
    ('optax._src.transform', 'AddDecayedWeightsState'): (),
    ('optax._src.base', 'EmptyState'): (),
    ('optax._src.wrappers', 'MaskedState'): ('inner_state',),
    ('optax.transforms._masking', 'MaskedState'): ('inner_state',),
}


class _Refused(Exception):
  """A global outside `_ALLOWED` (carries its dotted name)."""


def _named_tuple_standin(module: str, name: str,
                         fields: tuple[str, ...]) -> type:
  """A class that unpickles an instance of `module.name` as a field dict.

  Protocol 2 rebuilds NamedTuples with NEWOBJ, which needs a class and calls
  its `__new__` with the positional field values; returning a dict from
  `__new__` makes the result a plain container.
  """
  def new(cls, *values):
    del cls
    if len(values) != len(fields):
      raise pickle.UnpicklingError(
          f'{module}.{name} has {len(values)} values in the file but '
          f'{len(fields)} fields {fields} in the reference')
    return dict(zip(fields, values))
  return type(name, (), {'__new__': new, '__module__': __name__})


def _create_namedtuple(name: str, fieldnames: Any, modulename: str,
                       defaults: Any = None) -> type:
  """Stand-in for dill's `_create_namedtuple`, which dill 0.3 writes instead
  of a plain class reference; accepts only the classes of `_NAMED_TUPLES`."""
  del defaults
  fields = _NAMED_TUPLES.get((modulename, name))
  if fields is None or tuple(fieldnames) != fields:
    raise _Refused(f'{modulename}.{name}{tuple(fieldnames)}')
  return _named_tuple_standin(modulename, name, fields)


def _mapping(data: Any) -> dict[Any, Any]:
  """Haiku's old `FlatMapping(mapping)` / `frozendict(mapping)` as a dict."""
  if not isinstance(data, Mapping):
    raise pickle.UnpicklingError(
        f'a Haiku mapping was stored as {type(data).__name__}, not a mapping')
  return dict(data)


def _dtype(*args: Any) -> np.dtype:
  """`numpy.dtype`, except object dtypes (their items would be objects)."""
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise pickle.UnpicklingError('object arrays are not model weights')
  return dtype


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
  """numpy's `_reconstruct`, for plain ndarrays only (no subclasses)."""
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f'array subtype {subtype!r} is not ndarray')
  return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _scalar(dtype: np.dtype, data: bytes) -> np.generic:
  """numpy's `scalar` (a numpy number stored as its raw bytes)."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError(f'scalar of dtype {dtype!r}')
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _encode(text: str, encoding: str) -> bytes:
  """`_codecs.encode`: how protocol 2 writes `bytes` (array data) in Python 3."""
  if codecs.lookup(encoding).name != 'iso8859-1':
    raise pickle.UnpicklingError(f'bytes encoded as {encoding!r}')
  return text.encode('latin-1')


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): _dtype,
    ('_codecs', 'encode'): _encode,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    **{('builtins', t.__name__): t
       for t in (dict, list, tuple, set, frozenset, int, float, bool, complex,
                 bytes, bytearray, str)},
    **{(f'numpy.{core}.multiarray', name): function
       for core in ('core', '_core')
       for name, function in (('_reconstruct', _reconstruct),
                              ('scalar', _scalar))},
    **{('haiku._src.data_structures', name): _mapping
       for name in ('FlatMapping', 'FlatMap', 'frozendict')},
    **{(f'dill.{module}', '_create_namedtuple'): _create_namedtuple
       for module in ('_dill', 'dill')},
    **{key: _named_tuple_standin(*key, fields)
       for key, fields in _NAMED_TUPLES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals of `_ALLOWED`; refuses every other one."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise _Refused(f'{module}.{name}') from None


def load_pickle(path: str) -> dict[str, Any]:
  """Reads a reference checkpoint into plain dicts, lists and numpy arrays.

  Returns:
    {'experiment_state': {field: value} with the `_STATE_FIELDS`, 'step': int,
    'rng': uint32 array} — params/state as {module: {name: array}}, the
    optimizer state as a tuple of field dicts.

  Raises:
    checkpoint.CheckpointError: missing or corrupt file, a global that is not
      allowed (named in the message), or another structure than the
      reference's pretraining checkpoint.
  """
  if not gfile.exists(path):
    raise checkpoint.CheckpointError(
        f'checkpoint {path} does not exist; pass the path of a reference '
        '.pkl file')
  try:
    with gfile.GFile(path, 'rb') as f:
      data = _RestrictedUnpickler(f).load()
  except _Refused as e:
    raise checkpoint.CheckpointError(
        f'checkpoint {path} refers to the global {e}, which no reference BYOL '
        'checkpoint contains; refusing to load it (nothing from the file was '
        'run)') from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError, KeyError, MemoryError,
          tf_errors.OpError) as e:
    raise checkpoint.CheckpointError(
        f'checkpoint {path} is corrupt or not a reference BYOL checkpoint '
        f'({type(e).__name__}: {e})') from None
  _check_structure(data, path)
  return data


def _check_structure(data: Any, path: str) -> None:
  """Raises CheckpointError unless `data` has the reference's layout."""
  def fail(what):
    raise checkpoint.CheckpointError(
        f'checkpoint {path} is not a reference BYOL pretraining checkpoint: '
        f'{what}')
  if not isinstance(data, dict) or 'experiment_state' not in data:
    fail('no experiment_state at its top level')
  state = data['experiment_state']
  if not isinstance(state, dict) or set(state) != set(_STATE_FIELDS):
    fail(f'experiment_state is not a _ByolExperimentState {_STATE_FIELDS}')
  for field in _STATE_FIELDS[:4]:
    modules = state[field]
    if not isinstance(modules, dict) or not all(
        isinstance(v, dict) and all(isinstance(a, np.ndarray)
                                    for a in v.values())
        for v in modules.values()):
      fail(f'{field} is not a {{module: {{name: array}}}} mapping')


def _momentum(opt_state: Any) -> dict[str, Any] | None:
  """The reference LARS momentum (`ScaleByLarsState.mu`), if present."""
  parts = opt_state if isinstance(opt_state, (tuple, list)) else [opt_state]
  for part in parts:
    if isinstance(part, dict) and set(part) == {'mu'}:
      return part['mu']
  return None


def to_arrays(data: dict[str, Any]) -> dict[str, np.ndarray]:
  """Flattens a loaded reference checkpoint into byol_jax's npz keys.

  Params and BatchNorm state keep their paths (e.g.
  `online_params/res_net50/~/initial_conv/w`): the module names are the same.
  The LARS momentum `mu` becomes our `optax.trace` buffer (both are
  m ← momentum·m + trust(g + wd·p)), under `opt_state/<index>/trace/...`.
  Step and rng are not carried over: a converted checkpoint starts runs, it
  does not resume the reference's.
  """
  state = data['experiment_state']
  tree = {field: state[field] for field in _STATE_FIELDS[:4]}
  mu = _momentum(state['opt_state'])
  if mu is not None:
    template = jax.eval_shape(optim.lars(0.0).init, state['online_params'])
    tree['opt_state'] = tuple(
        part._replace(trace=mu) if isinstance(part, optax.TraceState) else part
        for part in template)
  return checkpoint.flatten(tree)


def describe(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Encoder module and width of flattened checkpoint arrays, for messages."""
  stems = [key for key in arrays if key.startswith('online_params/') and
           key.endswith('/~/initial_conv/w')]
  if not stems:
    return {}
  encoder = stems[0].split('/')[1]
  return dict(encoder=encoder,
              width_multiplier=arrays[stems[0]].shape[-1] / 64)


def load_arrays(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """A reference `.pkl` as byol_jax checkpoint ({key: array}, metadata)."""
  data = load_pickle(path)
  arrays = to_arrays(data)
  metadata = dict(kind='reference_byol', source=path,
                  reference_step=int(data.get('step', 0)), **describe(arrays))
  return arrays, metadata


def load_pretraining(
    path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """A pretraining checkpoint, byol_jax `.npz` or reference `.pkl` (by
  suffix), as ({key: array}, metadata).

  Raises:
    checkpoint.CheckpointError: see checkpoint.load_arrays and load_arrays;
      also a linear evaluation's checkpoint, which holds no BYOL networks.
  """
  if path.endswith('.pkl'):
    return load_arrays(path)
  arrays, metadata = checkpoint.load_arrays(path)
  if metadata.get('kind') == 'linear_eval':
    encoder = metadata.get('encoder')
    evaluated = (f', e.g. the one it evaluated, {encoder}'
                 if encoder and encoder != 'random' else '')
    raise checkpoint.CheckpointError(
        f'checkpoint {path} is a linear-evaluation checkpoint, not a '
        "pretraining one; pass the pretraining checkpoint (its workdir's "
        f'checkpoints/ file) instead{evaluated}')
  return arrays, metadata
