#!/usr/bin/env bash
# Sets up the environment if needed (as launch/demo.sh does) and runs the
# whole test suite on 4 simulated CPU devices. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
"$PY" -m pytest -q tests "$@"
