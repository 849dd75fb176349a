#!/usr/bin/env bash
# Repeat one issue-2 target N times (a shared host's memory bandwidth drifts from run to run):
# every run's JSON goes to bench/results/<device>/repeats/<target>-<i>.json, then the ratios
# vs torch-fused of all runs are printed (median, min, max). All runs are kept: none is picked.
#   bash bench/repeat.sh clip 7
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
target=$1 n=${2:-5}
case $target in
  adamw)  name=adamw-20M-200t;            opts="--numel 20M --tensors 200 --steps 50 --warmup 5" ;;
  clip)   name=adamw-clip-20M-200t;       opts="--numel 20M --tensors 200 --clip --steps 50 --warmup 5" ;;
  groups) name=adamw-1000x16-per-param;   opts="--numel 16000 --tensors 1000 --groups per-param --steps 200 --warmup 20" ;;
  *) echo "unknown target $target (adamw clip groups)" >&2; exit 2 ;;
esac
slug=$("$PY" -c "import torch; from fusedopt.bench.report import device_slug; print(device_slug(torch.device('cpu')))")
out=bench/results/$slug/repeats
mkdir -p "$out"
for i in $(seq 1 "$n"); do
  # shellcheck disable=SC2086
  "$PY" -m fusedopt.bench --device cpu $opts --impl fusedopt,torch-fused --json "$out/$name-$i.json" >/dev/null
done
"$PY" - "$out" "$name" "$n" <<'PYEOF'
import json, statistics, sys
out, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ratios = []
for i in range(1, n + 1):
    r = {x["impl"]: x for x in json.load(open(f"{out}/{name}-{i}.json"))["results"]}
    ratios.append(r["torch-fused"]["median_ms"] / r["fusedopt"]["median_ms"])
print(f"{name}: fusedopt vs torch-fused over {n} runs: median {statistics.median(ratios):.2f}x, "
      f"min {min(ratios):.2f}x, max {max(ratios):.2f}x  ({', '.join(f'{r:.2f}' for r in ratios)})")
PYEOF
