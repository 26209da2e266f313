#!/usr/bin/env bash
# The GPU comparison of JAX and torch in one run of at most --budget seconds (default 480): see bench/gpu.py.
#   bench/gpu.sh                 # on one NVIDIA GPU, after: pip install -e ".[gpu]"
#   bench/gpu.sh --cpu-smoke     # the same stages on CPU at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu.py "$@"
