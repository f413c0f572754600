#!/usr/bin/env bash
# Regenerate the figures the docs show, examples/figures/*.png: every example that saves a
# figure runs with its default settings and `--out examples/figures` (run alone, an example
# writes to the git-ignored examples/out and leaves the checkout clean). A few minutes on CPU.
# Usage: bash scripts/figures.sh [example ...]   (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT=examples/figures
if [ "$#" -gt 0 ]; then
  names=("$@")
else
  mapfile -t names < <(grep -l -- '--out' examples/[!_]*.py | xargs -n1 basename | sed 's/\.py$//')
fi
for name in "${names[@]}"; do
  echo "== examples/$name.py --out $OUT"
  "$PY" "examples/$name.py" --out "$OUT"
done
