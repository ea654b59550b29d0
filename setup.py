"""Installs byol_jax: `pip install -e .` (add `[test]` for the test suite)."""

import setuptools

setuptools.setup(
    name='byol_jax',
    version='0.1.0',
    description='BYOL (Grill et al. 2020) in JAX/Haiku, faithful to the reference.',
    packages=setuptools.find_packages(include=['byol_jax', 'byol_jax.*',
                                               'experiments', 'experiments.*']),
    python_requires='>=3.11',
    install_requires=[
        'absl-py>=2.1',
        'chex>=0.1.88',
        'dm-haiku>=0.0.13',
        'jax>=0.4.35',
        'ml-collections>=1.0',
        'numpy>=1.26',
        'optax>=0.2.4',
        # Host-side input pipeline only; the CPU build keeps TensorFlow off
        # accelerators so it never competes with JAX for device memory.
        'tensorflow-cpu>=2.17',
        'tensorflow-datasets>=4.9.6',
        # tf.summary writes TensorBoard events only with this installed.
        'tensorboard>=2.17',
        # The end-of-run PNG plot of the training curves.
        'matplotlib>=3.8',
    ],
    extras_require={
        'test': ['pytest>=8'],
        'tpu': ['jax[tpu]'],
        'gpu': ['jax[cuda12]'],
    },
)
