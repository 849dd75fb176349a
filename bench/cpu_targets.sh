#!/usr/bin/env bash
# The CPU results committed under bench/results/<device>/ (JSON + PNG each): the default run
# (resnet50 AdamW, fusedopt vs torch's three implementations) and issue 2's three targets, both
# sides in one process, interleaved, torch.set_num_threads = the machine's cores (2 here).
#   bash bench/cpu_targets.sh            # all four
#   bash bench/cpu_targets.sh adamw clip # some of: default adamw clip groups sweep
# A shared machine makes every figure noisy: each JSON records the 1-min load average at the start
# and end of its run; the script first waits (up to WAIT_S, default 120 s) for a quieter machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
slug=$("$PY" -c "import torch; from fusedopt.bench.report import device_slug; print(device_slug(torch.device('cpu')))")
out=bench/results/$slug
mkdir -p "$out"
wait_quiet() {
  "$PY" - <<PYEOF
import os, time
t0 = time.time()
while os.getloadavg()[0] > 1.5 and time.time() - t0 < ${WAIT_S:-120}:
    time.sleep(5)
print(f"load average {os.getloadavg()[0]:.2f} after {time.time() - t0:.0f} s")
PYEOF
}
bench() {   # name, options...
  local name=$1; shift
  wait_quiet
  echo "+ fusedopt-bench $* --json $out/$name.json --plot $out/$name.png"
  "$PY" -m fusedopt.bench "$@" --json "$out/$name.json" --plot "$out/$name.png"
}
targets=${*:-default adamw clip groups sweep}
for t in $targets; do
  case $t in
    default) bench default --device cpu ;;
    adamw)   bench adamw-20M-200t --device cpu --numel 20M --tensors 200 --impl fusedopt,torch-fused --steps 50 --warmup 5 ;;
    clip)    bench adamw-clip-20M-200t --device cpu --numel 20M --tensors 200 --clip --impl fusedopt,torch-fused --steps 50 --warmup 5 ;;
    groups)  bench adamw-1000x16-per-param --device cpu --numel 16000 --tensors 1000 --groups per-param --impl fusedopt,torch-fused --steps 200 --warmup 20 ;;
    sweep)   bench adamw-sweep-numel-100t --device cpu --tensors 100 --sweep numel --impl fusedopt,torch-foreach,torch-fused --steps 20 --warmup 3 ;;
    *) echo "unknown target $t (default adamw clip groups sweep)" >&2; exit 2 ;;
  esac
done
