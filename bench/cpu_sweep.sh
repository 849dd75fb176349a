#!/usr/bin/env bash
# Issue 27's committed CPU sweep: every optimizer x {fp32, bf16, fp16} x each CPU level fusedopt's
# kernels have here (avx2; avx512 where the machine has it), fusedopt beside torch's three
# implementations (each checked first, Note [checked baselines]), 20M params in 200 tensors, one
# JSON per point under bench/results/<device>/sweep/, then the table (python -m
# fusedopt.bench.summary) in sweep.md beside them.
#   bash bench/cpu_sweep.sh                  # all of it
#   OPTIMIZERS="adamw sgd" DTYPES=bf16 bash bench/cpu_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
slug=$("$PY" -c "import torch; from fusedopt.bench.report import device_slug; print(device_slug(torch.device('cpu')))")
out=bench/results/$slug/sweep
mkdir -p "$out"
optimizers=${OPTIMIZERS:-$("$PY" -c "from fusedopt.bench.impls import optimizers; print(*optimizers())")}
levels=""
for level in avx2 avx512; do   # the levels the extension reaches when capped there
  got=$(FUSEDOPT_CPU_CAPABILITY=$level "$PY" -c "import fusedopt._C as C; print(C.cpu_capability())")
  [ "$got" = "$level" ] && levels="$levels $level"
done
for level in $levels; do
  for opt in $optimizers; do
    for dtype in ${DTYPES:-fp32 bf16 fp16}; do
      echo "+ FUSEDOPT_CPU_CAPABILITY=$level fusedopt-bench --optimizer $opt --dtype $dtype"
      FUSEDOPT_CPU_CAPABILITY=$level "$PY" -m fusedopt.bench --device cpu --optimizer "$opt" \
        --dtype "$dtype" --numel 20M --tensors 200 --steps ${STEPS:-20} --warmup 3 \
        --impl fusedopt,torch-forloop,torch-foreach,torch-fused \
        --json "$out/$opt-$dtype-$level.json" --plot "$out/$opt-$dtype-$level.png" >/dev/null
    done
  done
done
"$PY" -m fusedopt.bench.summary "$out"/*.json | tee "$out/sweep.md"
