#!/usr/bin/env bash
# Create .venv (Python 3.11) with the pinned lock and the project installed editable. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.lock-installed
if [ ! -f "$stamp" ] || ! cmp -s envs/requirements.lock "$stamp"; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r envs/requirements.lock
  cp envs/requirements.lock "$stamp"
fi
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
