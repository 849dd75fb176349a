#!/usr/bin/env bash
# Set up, then benchmark fusedopt against torch.optim on the device at hand (GPU if present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec fusedopt-bench "$@"
