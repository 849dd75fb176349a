#!/usr/bin/env bash
# Set up, compile-check the CUDA kernels, run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
if [ -f .ci/compile_cuda.sh ]; then bash .ci/compile_cuda.sh; fi
# Without a GPU the Triton kernels run under Triton's interpreter on CPU tensors.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
"$PY" -m pytest tests -q "$@"
