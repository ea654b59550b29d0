"""Entry points and configs of byol_jax."""

import os

# Set before any module imports TensorFlow (used only for the host input
# pipeline): its C++ INFO/WARNING lines would drown the progress lines and
# turn one-line errors into five. TensorFlow 2.16+ prints its oneDNN notice
# before honouring TF_CPP_MIN_LOG_LEVEL, so that notice is switched off at
# its source (oneDNN speeds up TF's matmuls and convolutions, which the
# input pipeline does not run).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
