"""Test setup: 4 simulated CPU devices, so pmap and cross-replica BatchNorm run."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# Compiled steps are cached across test processes and runs (the end-to-end
# tests start several processes that compile the same step).
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 '.cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')
# Temporary folders of our own: pytest keeps only the newest three
# basetemps under one root and deletes older ones, so other pytest sessions
# on a shared machine would delete the folders of a running one.
os.environ.setdefault(
    'PYTEST_DEBUG_TEMPROOT',
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 '.cache', 'pytest_tmp'))
os.makedirs(os.environ['PYTEST_DEBUG_TEMPROOT'], exist_ok=True)
