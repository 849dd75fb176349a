#!/usr/bin/env bash
# Set-up of a fresh machine: torch (kept if installed; else the CPU build, never the multi-GB CUDA
# wheel set on a machine without a GPU), then fusedopt with its compiled extension and the
# test + bench extras. Idempotent: a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q torch
  else
    "$PY" -m pip install -q torch==2.13.0   # a plain 'torch' would pull the CUDA wheels
  fi
fi
# No build isolation (the extension must be built against the torch above), so the build tools
# come first: setuptools >= 70.1 carries bdist_wheel, ninja makes the C++ build parallel.
"$PY" -m pip install -q "setuptools>=70.1" wheel ninja
# MAX_JOBS: 2-core machines.
MAX_JOBS=${MAX_JOBS:-2} FUSEDOPT_REQUIRE_EXT=${FUSEDOPT_REQUIRE_EXT:-1} \
  "$PY" -m pip install -q --no-build-isolation -e ".[test,bench]"
"$PY" -c "import fusedopt; print('fusedopt backends available:', fusedopt.available_backends())"
