#!/usr/bin/env bash
# Run benchmark suites 1-4 and 6-8 at full size on a CUDA machine, in one call of at most 8 minutes,
# and write the table to OUTDIR/RESULTS_gpu.md (log beside it).
#
#   bash bench/gpu.sh OUTDIR
#
# Needs no network: it uses the first Python among $PYTHON, ./.venv/bin/python and python3 whose
# jax has a GPU backend (e.g. `jax[cuda12]` or `jax[cuda13]` installed beforehand) and that can
# import optax and chex; optareg is imported from this checkout. Exits non-zero, with
# diagnostics, when no such Python is found. Environment knobs: REPS (default 20), LIMIT_S
# (default 470, the hard wall-clock limit of the benchmark itself), SUITES (default 1,2,3,4,6,7,8).
set -uo pipefail
OUTDIR="${1:?usage: bash bench/gpu.sh OUTDIR}"
REPS="${REPS:-20}"
LIMIT_S="${LIMIT_S:-470}"
SUITES="${SUITES:-1,2,3,4,6,7,8}"
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"

probe='import jax, optax, chex; assert jax.default_backend() == "gpu", jax.default_backend(); print(jax.__version__, jax.devices())'
PY=""
for cand in "${PYTHON:-}" ./.venv/bin/python python3; do
  [ -n "$cand" ] || continue
  command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
  if out=$("$cand" -c "$probe" 2>&1); then
    PY="$cand"
    echo "using $cand: jax $out"
    break
  fi
  echo "-- $cand has no usable GPU jax: $(echo "$out" | tail -n 1)"
done
if [ -z "$PY" ]; then
  echo "ERROR: no Python with a GPU-enabled jax (+ optax, chex) found." >&2
  echo "--- diagnostics ---" >&2
  (command -v nvidia-smi >/dev/null && nvidia-smi) >&2 || echo "nvidia-smi not found" >&2
  for cand in "${PYTHON:-}" ./.venv/bin/python python3; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
    echo "== $cand" >&2
    "$cand" -c 'import sys; print(sys.version)' >&2 2>&1
    "$cand" -m pip list 2>/dev/null | grep -i -E "^(jax|jaxlib|jax-cuda|optax|chex)" >&2
    "$cand" -c 'import jax; print("backend:", jax.default_backend(), jax.devices())' >&2 2>&1 | tail -n 3
  done
  exit 2
fi

export PYTHONUNBUFFERED=1
# One process, all suites: the problem tree is built once and shared between suites 1 and 2.
timeout --signal=TERM --kill-after=15 "$LIMIT_S" \
  "$PY" -m bench --size full --reps "$REPS" --suites "$SUITES" \
  --label "GPU run (bench/gpu.sh)" --out "$OUTDIR/RESULTS_gpu.md" 2>&1 | tee "$OUTDIR/gpu_log.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "ERROR: benchmark exited with status $rc (124 = hit the ${LIMIT_S}s limit; try REPS=10)" >&2
  exit "$rc"
fi
echo "wrote $OUTDIR/RESULTS_gpu.md"
