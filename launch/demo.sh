#!/usr/bin/env bash
# The whole demo on a fresh machine: set-up if needed, BYOL pretraining with
# the `demo` preset on Fashion-MNIST, then linear evaluation of that
# checkpoint, printing top-1/top-5 on the 10,000 test images.
#
# Usage:
#   [DEMO_WORKDIR=DIR] bash launch/demo.sh [-h|--help]
#
#   DEMO_WORKDIR  where results go (default runs/demo)
#   -h, --help    print this help and exit
#
# Re-running resumes where a killed run stopped; a finished run is reported
# again without recomputation.
#
# Example:
#   DEMO_WORKDIR=/tmp/byol_demo bash launch/demo.sh
set -euo pipefail

usage() {  # the comment block at the top of this file, without its '#'
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  '') ;;
  *) echo "error: unknown option $1; launch/demo.sh takes none (see --help)" >&2
     exit 2 ;;
esac
cd "$(dirname "$0")/.."
source launch/setup_env.sh
workdir="${DEMO_WORKDIR:-runs/demo}"

"$PY" -m experiments.pretrain \
  --config=experiments/configs/byol.py:demo --workdir="$workdir/pretrain"
"$PY" -m experiments.linear_eval \
  --config=experiments/configs/linear_eval.py:demo \
  --config.checkpoint="$workdir/pretrain" --workdir="$workdir/linear_eval"
echo "results: $workdir/linear_eval/results.json, curves: $workdir/*/metrics.png"
