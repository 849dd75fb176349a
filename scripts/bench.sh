#!/usr/bin/env bash
# Set up, then benchmark fusedopt against torch.optim on the device at hand (GPU if present);
# the JSON and plot go to fusedopt-bench-results/<device>/ under the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
exec "$PY" -m fusedopt.bench "$@"   # the Python set up above, whatever fusedopt-bench is on PATH
