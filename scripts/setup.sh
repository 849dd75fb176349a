#!/usr/bin/env bash
# Set-up of a fresh machine: torch (kept if installed; else the CPU build, never the multi-GB CUDA
# wheel set on a machine without a GPU), then fusedopt with its compiled extension and the
# test + bench + mmengine extras. Nothing is installed that is already there, so on a machine
# that has every dependency (the GPU machine: no network at all) it runs offline.
# Idempotent: a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${FUSEDOPT_EXTRAS:-test,bench,mmengine}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q torch
  else
    "$PY" -m pip install -q torch==2.13.0   # a plain 'torch' would pull the CUDA wheels
  fi
fi
# What is missing of the build tools (no build isolation: the extension is built against the
# torch above; setuptools >= 70.1 carries bdist_wheel, ninja makes the C++ build parallel) and of
# the extras' requirements, as pip requirement strings; empty when all are there.
missing=$("$PY" scripts/missing_requirements.py "$EXTRAS")
if [ -n "$missing" ]; then
  echo "setup: installing $(echo "$missing" | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $missing
fi
# MAX_JOBS: 2-core machines. --no-deps --no-index: every requirement is there by now.
MAX_JOBS=${MAX_JOBS:-2} FUSEDOPT_REQUIRE_EXT=${FUSEDOPT_REQUIRE_EXT:-1} \
  "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e .
"$PY" -c "import fusedopt; print('fusedopt backends available:', fusedopt.available_backends())"
