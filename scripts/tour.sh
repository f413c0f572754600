#!/usr/bin/env bash
# Install optareg with its example extras into ./.venv and run the example tour.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[examples]"
.venv/bin/python examples/quickstart.py "$@"
