#!/usr/bin/env bash
# Install optareg with its test extras into ./.venv (fresh machine: only Python needed) and run
# the whole test suite: the single-device suite, then the 8-simulated-device suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is a test oracle only (AdamW parity); this pin resolves to the CPU wheel.
.venv/bin/python -m pip install -q -e ".[test]" "torch==2.13.0"
.venv/bin/python -m ruff format --check optareg tests examples bench docs
.venv/bin/python -m ruff check optareg tests examples bench docs
.venv/bin/python -m pytest -q -n 2 -m "not multidevice and not multihost" --durations=40 "$@"
if ls tests/test_multidevice*.py >/dev/null 2>&1; then
  XLA_FLAGS="--xla_force_host_platform_device_count=8" \
    .venv/bin/python -m pytest -q -p no:randomly -m multidevice tests/test_multidevice*.py
fi
# 2 processes of 2 CPU devices each, connected by jax.distributed over loopback (gloo)
.venv/bin/python -m pytest -q -p no:randomly -m multihost tests/test_multihost.py
