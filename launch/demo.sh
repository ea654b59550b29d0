#!/usr/bin/env bash
# The whole demo on a fresh machine: set-up if needed, BYOL pretraining with
# the `demo` preset on Fashion-MNIST, then linear evaluation of that
# checkpoint, printing top-1/top-5 on the 10,000 test images.
# Re-running resumes where a killed run stopped; a finished run is reported
# again without recomputation. DEMO_WORKDIR chooses where results go
# (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
workdir="${DEMO_WORKDIR:-runs/demo}"

"$PY" -m experiments.pretrain \
  --config=experiments/configs/byol.py:demo --workdir="$workdir/pretrain"
"$PY" -m experiments.linear_eval \
  --config=experiments/configs/linear_eval.py:demo \
  --config.checkpoint="$workdir/pretrain" --workdir="$workdir/linear_eval"
echo "results: $workdir/linear_eval/results.json, curves: $workdir/*/metrics.png"
