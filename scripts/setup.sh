#!/usr/bin/env bash
# Set-up of a fresh machine: torch (kept if installed; else the CPU build, never the multi-GB CUDA
# wheel set on a machine without a GPU), then fusedopt with its compiled extension and the
# test + bench + mmengine extras. Nothing is installed that is already there, so on a machine
# that has every dependency (the GPU machine: no network at all) it runs offline.
# Idempotent: a second run on an unchanged tree changes nothing and takes seconds (the C++ build
# is skipped while scripts/build_stamp.py finds it current).
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
mapfile -t missing < <("$PY" scripts/missing_requirements.py "$EXTRAS")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "$PY" -m pip install -q "${missing[@]}"
fi
# MAX_JOBS: 2-core machines. --no-deps --no-index: every requirement is there by now.
export MAX_JOBS=${MAX_JOBS:-2} FUSEDOPT_REQUIRE_EXT=${FUSEDOPT_REQUIRE_EXT:-1}
# The editable install reads the Python sources from the tree; only csrc/, setup.py, pyproject.toml,
# torch or the build flags call for a new build (scripts/build_stamp.py records them).
if stale=$("$PY" scripts/build_stamp.py check); then
  echo "setup: fusedopt._C is current (csrc/, setup.py, torch unchanged): no build"
else
  echo "setup: $stale"
  echo "setup: $("$PY" scripts/build_stamp.py plan)"
  start=$SECONDS
  "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e .
  "$PY" scripts/build_stamp.py write
  echo "setup: built and installed in $((SECONDS - start)) s"
fi
"$PY" -c "import fusedopt; print('fusedopt backends available:', fusedopt.available_backends())"
