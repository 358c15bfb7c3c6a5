#!/usr/bin/env bash
# The CUDA check on one GPU machine, from the repository root, with benchmarks/gpu_wheels carried
# (made here by `python benchmarks/gpu_check.py prepare`):
#
#   bash benchmarks/gpu_check.sh                 # all parts in ~290 s; archive: $OUT/gpu_check-<time>.tar.gz
#   bash benchmarks/gpu_check.sh --only c --budget 280   # a second try of one part
#   bash benchmarks/gpu_check.sh --dry           # on CPU at toy size (tests/test_gpu_check.py)
#
# It uses the image's python3 (the one with torch) and installs the wheels into a virtualenv that
# sees the image's packages; benchmarks/gpu_check.py says what each part does.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py run "$@"
