#!/usr/bin/env bash
# The whole GPU side in one offline run, for a short GPU lease (DEVELOPERS.md, "GPU time"):
#   build     the extension with its CUDA kernels, against this machine's torch, no network;
#             fails if the CUDA kernels are missing from it. With FUSEDOPT_PREBUILT=1 the tree's
#             fusedopt/_C (carried, built elsewhere against the same torch) is used, and this
#             machine's own build runs in the background for part diag
#   tests     every GPU test file, each test under a timeout (tests/conftest.py); a test that
#             crashes the process is noted and the file runs again without it
#   compile   scripts/gpu/gpu_compile.py: a training step under torch.compile(mode="reduce-overhead"),
#             fusedopt against torch.optim: time, CUDA-graph skips, params against eager
#   bench     the benchmarks behind the GPU targets (scripts/gpu/gpu_targets.py lists them) and the
#             Triton launch-size sweep (bench/triton_blocks.py), JSON + PNG, targets met or missed
#   lowprec   scripts/gpu/gpu_lowprec.py: fp16/bf16 error against fp64 vs torch fused's, 200 steps;
#             then fusedopt.bench.drift: each precision mode's drift from fp32 (results/drift.json);
#             GradScaler with injected inf/nan and skip_nonfinite leave everything bitwise as is
#   diag      scripts/gpu/gpu_diag.py: where a step's host time goes; scripts/gpu/gpu_throw.py: bad input
#             to fusedopt._C raises, not crashes (and, if it crashes, why)
#   stress    scripts/gpu/gpu_stress.py: 1200 tensors of random sizes, empty and misaligned ones,
#             a found_inf step, against torch's fused AdamW, for the cuda and triton backends
#   sanitize  scripts/sanitize_case.py under compute-sanitizer (SANITIZE_TOOLS, default memcheck
#             racecheck initcheck synccheck; a one-line note where the tool is missing or refuses)
#   e2e       a real training run (fusedopt-bench e2e, issue 29): mmengine's Runner with the seed's
#             recipe, torch.optim against fusedopt, standalone, one CUDA graph, torch.compile;
#             spread band, host syncs, resume. mmengine comes from the carried wheelhouse .whl/e2e
#             (scripts/gpu/wheelhouse.sh; E2E_WHEELS names another), pip --no-index. Its runs go
#             in order of importance, each while E2E_BUDGET (default 300 s) and the budget last
# Parts run in that order against one time budget (GPU_CHECK_BUDGET seconds, default 420: under
# 8 minutes with the machine's start); a part that would not fit in what is left is skipped and
# the summary says so. Measured on an H200 (runs of 2026-11-27): build 50-84 s, tests 100 s,
# compile 57 s, bench 80-115 s, lowprec 23 s (+ the drift table, est. 30 s), diag 35 s (+40 s for gpu_throw's minimal builds),
# stress 25 s, memcheck + racecheck + synccheck 20 s, initcheck 7 s; e2e not measured yet (the
# dry form: 40-160 s on a 2-core machine). The tests part also runs the bad-input tests on this
# machine's build (tests/test_bad_input.py, the bad cases of tests/test_cpu_kernels.py; part diag
# runs scripts/gpu/gpu_throw.py): run 4 passed every GPU test while 3 of 3 bad-input cases
# crashed its diag (issue 28). OUTDIR gets at most 8
# files: summary.md first (each part's status and time), tests.log (with each failure as it
# happened), sanitize.log, targets.md, lowprec.md, compile.md, throw.log and results.tar.gz
# (every log, JSON and PNG).
#
# usage: scripts/gpu_check.sh [--dry] [--parts build,tests,compile,bench,lowprec,diag,stress,sanitize,e2e] [OUTDIR]
#   --dry  the same flow on a CPU machine (cpu backend, Triton's interpreter, tiny sizes): CI
#          runs it to check this script. Default OUTDIR: ./gpu_check_out.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
# the scripts import fusedopt from this tree, installed or not (FUSEDOPT_PREBUILT installs nothing)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

DRY=0
PARTS=build,tests,compile,bench,lowprec,diag,stress,sanitize,e2e
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --parts) PARTS=$2; shift ;;
    --parts=*) PARTS=${1#--parts=} ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/results/bench" "$WORK/results/logs"
LOGS=$WORK/results/logs
DEVBUILD=$WORK/devbuild     # FUSEDOPT_PREBUILT: this machine's own build of the extension
BUDGET=${GPU_CHECK_BUDGET:-420}
START=$SECONDS
SUMMARY=$WORK/summary_rows.md
: >"$SUMMARY"
STATUS=0

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  export TRITON_INTERPRET=1
  export FUSEDOPT_TEST_TIMEOUT=${FUSEDOPT_TEST_TIMEOUT:-600}
else
  DEVICE=cuda
  export FUSEDOPT_TEST_TIMEOUT=${FUSEDOPT_TEST_TIMEOUT:-90}
fi
export FUSEDOPT_TEST_TIMEOUT_LOG=$LOGS/tests_live.log

left() { echo $((BUDGET - (SECONDS - START))); }
wants() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# row PART STATUS SECONDS NOTE: one line of the summary table
row() {
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
  echo "gpu_check: $1: $2 (${3}s) $4"
  case "$2" in FAIL*) STATUS=1 ;; esac
}

# run_part NAME ESTIMATE_SECONDS FUNCTION: runs FUNCTION if ESTIMATE fits in the time left
run_part() {
  local name=$1 estimate=$2 fn=$3
  if ! wants "$name"; then
    return
  fi
  if [ "$(left)" -lt "$estimate" ]; then
    row "$name" "skipped" 0 "needs ~${estimate}s, $(left)s of the budget left"
    return
  fi
  local t0=$SECONDS note
  note=$("$fn" 2>>"$LOGS/$name.log")
  local rc=$?
  if [ $rc -eq 0 ]; then
    row "$name" "pass" $((SECONDS - t0)) "$note"
  else
    row "$name" "FAIL (rc $rc)" $((SECONDS - t0)) "$note"
  fi
}

# ---- environment ------------------------------------------------------------------------------
{
  date -u +"%Y-%m-%d %H:%M UTC"
  echo "git: ${FUSEDOPT_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty)')}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda})")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as exc:
    print(f"triton: not importable ({exc})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
EOF
  echo "cores: $(nproc)"
} >"$LOGS/environment.txt" 2>&1

NVCC=$(command -v nvcc || true)
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [ -z "$NVCC" ] && [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then NVCC=$d/bin/nvcc; fi
done
if [ -n "$NVCC" ]; then
  export PATH="$(dirname "$NVCC"):$PATH" CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
fi

# ---- parts ------------------------------------------------------------------------------------
part_build() {
  if [ "$DRY" = 1 ]; then
    # CI built the extension moments ago (scripts/setup.sh); building it again costs a minute
    "$PY" -c "import fusedopt._C" >&2 || return 1
    echo "dry: kept the extension scripts/setup.sh built; CPU kernels present"
    return 0
  fi
  [ -n "$NVCC" ] || { echo "nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"; return 1; }
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
  if [ "${FUSEDOPT_PREBUILT:-0}" = 1 ]; then
    # installed without compiling, for the package layout (fusedopt.kernels is kernels/)
    FUSEDOPT_NO_EXT=1 "$PY" -m pip install --no-deps --no-index --no-build-isolation -e . \
      >"$LOGS/install.log" 2>&1 || { echo "pip install failed: see logs/install.log"; return 1; }
    "$PY" -c "from fusedopt import _C; assert any(n.startswith('cuda_') for n in dir(_C)), 'no CUDA kernels'" >&2 \
      || { echo "FUSEDOPT_PREBUILT: the tree's fusedopt/_C does not load or lacks the CUDA kernels"; return 1; }
    # this machine's own build, in a copy, for scripts/gpu/gpu_throw.py (part diag); 8 of the cores,
    # the tests use the rest. Its streams go to files: $(...) around this function would wait.
    mkdir -p "$DEVBUILD"
    tar --exclude='*.so' --exclude=build -cf - csrc setup.py pyproject.toml README.md fusedopt \
      | tar -xf - -C "$DEVBUILD"
    (cd "$DEVBUILD" && MAX_JOBS=8 FUSEDOPT_CUDA_ARCHS=$arch FUSEDOPT_REQUIRE_EXT=1 \
       FUSEDOPT_REQUIRE_CUDA=1 setsid "$PY" setup.py build_ext --inplace >"$LOGS/build.log" 2>&1
     echo $? >"$DEVBUILD/rc") </dev/null >/dev/null 2>&1 &
    echo "carried fusedopt/_C (FUSEDOPT_PREBUILT, $(sed -n 's/^.*\] *//p' <(readelf -p .comment fusedopt/_C*.so 2>/dev/null) | head -n 1)); this machine's build runs in the background"
    return 0
  fi
  # -v: the compile and link lines go into the log (scripts/gpu/gpu_throw.py asks about the flags)
  MAX_JOBS=$(nproc) FUSEDOPT_CUDA_ARCHS=$arch FUSEDOPT_REQUIRE_EXT=1 FUSEDOPT_REQUIRE_CUDA=1 \
    "$PY" -m pip install -v --no-deps --no-index --no-build-isolation -e . >"$LOGS/build.log" 2>&1 \
    || { echo "pip install failed: see logs/build.log"; tail -n 30 "$LOGS/build.log" >&2; return 1; }
  "$PY" -c "from fusedopt import _C; assert any(n.startswith('cuda_') for n in dir(_C)), 'no CUDA kernels'" >&2 \
    || { echo "fusedopt._C lacks the CUDA kernels"; return 1; }
  echo "sm_${arch/./}, $(nproc) jobs, nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
}

part_tests() {
  # a file, then pytest's selection of it if any; the bad-input ones run on this machine's build
  local files=(tests/test_cuda.py tests/test_cuda_precision.py tests/test_schedulers_cuda.py
               tests/test_triton.py tests/test_bad_input.py "tests/test_cpu_kernels.py -k bad")
  local rc=0 entry f sel notes=()
  for entry in "${files[@]}"; do
    read -ra sel <<<"$entry"
    f=${sel[0]}
    # A test that crashes the process (a segfault) or outlives FUSEDOPT_TEST_TIMEOUT (conftest.py
    # ends the process) would hide the rest of its file: the last test the live log saw start
    # is noted, and the file runs again without it and without the tests that already ran
    # (their failures are in the live log), at most 4 times.
    local deselect=() crashed=() earlier=0 attempt r mark since last
    for attempt in 1 2 3 4; do
      mark=0
      [ -f "$FUSEDOPT_TEST_TIMEOUT_LOG" ] && mark=$(wc -l <"$FUSEDOPT_TEST_TIMEOUT_LOG")
      echo "== $entry${crashed[*]:+ (again, after ${crashed[*]})}" >>"$LOGS/tests.log"
      timeout --kill-after=10 "$(left)" "$PY" -m pytest "${sel[@]}" -q -rfEs -p no:cacheprovider \
        "${deselect[@]}" >>"$LOGS/tests.log" 2>&1
      r=$?
      since=$(tail -n +"$((mark + 1))" "$FUSEDOPT_TEST_TIMEOUT_LOG" 2>/dev/null)
      if { [ $r -ge 128 ] && [ $r -ne 137 ]; } || grep -q "^Timeout (" <<<"$since"; then
        last=$(grep "^tests/[^:]*\.py::" <<<"$since" | tail -n 1)
        [ -n "$last" ] || { rc=1; break; }
        echo "!! $last ended the process (exit $r)" >>"$LOGS/tests.log"
        crashed+=("$last")
        while read -r id; do
          deselect+=(--deselect "$id")
        done < <(grep "^tests/[^:]*\.py::" <<<"$since")
        earlier=$((earlier + $(grep -c "^tests/[^:]*\.py::" <<<"$since") - 1))
        rc=1
        continue
      fi
      [ $r -eq 0 ] || rc=1
      break
    done
    local failed_before=0
    [ ${#crashed[@]} -gt 0 ] && failed_before=$(grep "^FAILED $f::" "$FUSEDOPT_TEST_TIMEOUT_LOG" | sort -u | wc -l)
    notes+=("$(basename "$f" .py)${sel[1]:+ ${sel[*]:1}}: $(tail -n 1 "$LOGS/tests.log" | tr -d '=' | sed 's/^ *//')${crashed[*]:+ (after $earlier tests in earlier runs, $failed_before failures in all; ended the process: ${crashed[*]})}")
  done
  (IFS=';'; echo "${notes[*]}")
  return $rc
}

part_compile() {
  local args=(--json "$WORK/results/bench/compile.json")
  [ "$DRY" = 1 ] && args+=(--device cpu --backend cpu --width 32 --layers 2 --batch 8 --iters 4 --timed 5)
  timeout --kill-after=10 $(( $(left) - 5 )) "$PY" scripts/gpu/gpu_compile.py "${args[@]}" \
    >"$WORK/compile.md" 2>>"$LOGS/compile.log" || { echo "failed: see compile.md, logs/compile.log"; return 1; }
  if [ "$DRY" = 0 ] && [ "$(left)" -gt 150 ]; then   # one group per parameter: paramwise_cfg's shape
    echo >>"$WORK/compile.md"
    timeout --kill-after=10 $(( $(left) - 5 )) "$PY" scripts/gpu/gpu_compile.py --per-param \
      --json "$WORK/results/bench/compile-per-param.json" >>"$WORK/compile.md" 2>>"$LOGS/compile.log" \
      || { echo "--per-param failed: see compile.md"; return 1; }
  fi
  grep "reduce-overhead" "$WORK/compile.md" | awk -F'|' '{gsub(/ /,"",$2); gsub(/ /,"",$4); printf "%s %s ms; ", $2, $4}'
}

part_stress() {
  local rc=0 b
  local backends=(cuda triton) args=(--device cuda --tensors 1200)
  if [ "$DRY" = 1 ]; then
    backends=(cpu triton)
  fi
  for b in "${backends[@]}"; do
    local extra=("${args[@]}")
    if [ "$DRY" = 1 ]; then
      extra=(--device cpu --tensors $([ "$b" = cpu ] && echo 300 || echo 40) --max-numel 5000)
    fi
    timeout --kill-after=10 120 "$PY" scripts/gpu/gpu_stress.py --backend "$b" "${extra[@]}" \
      >>"$LOGS/stress.jsonl" 2>>"$LOGS/stress.log" || rc=1
  done
  "$PY" - "$LOGS/stress.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print("; ".join(f"{r['backend']}: {r['tensors']} tensors ({r['empty']} empty, {r['misaligned']} "
                f"misaligned), {r['problems']} mismatches" for r in rows) or "no result")
EOF
  return $rc
}

part_sanitize() {
  local backends=(cuda)
  if [ "$DRY" = 1 ]; then
    "$PY" scripts/sanitize_case.py --backend cpu --device cpu >"$LOGS/sanitize.log" 2>&1 \
      || { echo "the case itself failed"; return 1; }
    echo "dry: the case ran on the cpu backend without a sanitizer"
    return 0
  fi
  local cs
  cs=$(command -v compute-sanitizer || true)
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -z "$cs" ] && [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then cs=$d/bin/compute-sanitizer; fi
  done
  if [ -z "$cs" ]; then
    echo "compute-sanitizer not found: not run" | tee "$LOGS/sanitize.log"
    return 0
  fi
  local tool notes=() rc=0 out
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
    local budget=$(( $(left) - 10 ))
    if [ "$budget" -lt 30 ]; then notes+=("$tool: no time left"); continue; fi
    [ "$budget" -gt "${SANITIZE_LIMIT:-150}" ] && budget=${SANITIZE_LIMIT:-150}
    out=$LOGS/sanitize-$tool.log
    # only fusedopt's kernels (namespace fusedopt::cuda) are checked: torch's are not ours and
    # slow the tool down; a tool that rejects the filter runs unfiltered. Not initcheck: it
    # does not see what unchecked kernels write, so every tensor torch's kernels filled (zeros,
    # randn) read as uninitialised on the H200 (2026-11-27), 100 false reports in the first step.
    local filter=(--kernel-name kns=fusedopt)
    [ "$tool" = initcheck ] && filter=()
    timeout --kill-after=10 "$budget" "$cs" --tool "$tool" --error-exitcode 9 \
      "${filter[@]}" "$PY" scripts/sanitize_case.py --backend cuda >"$out" 2>&1
    local r=$?
    if [ $r -ne 0 ] && [ $r -ne 9 ] && [ $r -lt 124 ] && grep -qi "kernel-name\|unrecognized\|invalid" "$out"; then
      timeout --kill-after=10 "$budget" "$cs" --tool "$tool" --error-exitcode 9 \
        "$PY" scripts/sanitize_case.py --backend cuda >"$out" 2>&1
      r=$?
    fi
    local summary
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Device not supported" "$out" | tail -n 1)
    case $r in
      0) notes+=("$tool: ${summary:-clean}") ;;
      9) notes+=("$tool: ERRORS ${summary}"); rc=1 ;;
      124|137) notes+=("$tool: timed out after ${budget}s") ;;
      *) notes+=("$tool: did not run (rc $r) ${summary}") ;;
    esac
    { echo "== $tool (rc $r)"; grep -v "^=========     " "$out" | head -n 60; } >>"$LOGS/sanitize.log"
  done
  (IFS=';'; echo "${notes[*]}")
  return $rc
}

part_lowprec() {
  local args=(--backends cuda,triton --device cuda --steps 200)
  [ "$DRY" = 1 ] && args=(--backends cpu,triton --device cpu --steps 20 --small)
  timeout --kill-after=10 $(( $(left) - 5 )) "$PY" scripts/gpu/gpu_lowprec.py "${args[@]}" \
    >"$WORK/lowprec.md" 2>>"$LOGS/lowprec.log"
  local rc=$?
  # issue 25's drift of each precision mode against fp32 (README "Low precision"), on the device
  local drift=(--backend cuda --steps 300)
  [ "$DRY" = 1 ] && drift=(--backend cpu --steps 20)
  timeout --kill-after=10 $(( $(left) - 5 )) "$PY" -m fusedopt.bench.drift "${drift[@]}" \
    --json "$WORK/results/drift.json" >/dev/null 2>>"$LOGS/lowprec.log" || rc=1
  echo "$(grep -c '| yes |\|| pass |' "$WORK/lowprec.md") checks pass, $(grep -c '| NO |\|| FAIL |' "$WORK/lowprec.md") fail (lowprec.md); drift of the precision modes in results/drift.json"
  return $rc
}

part_diag() {
  local args=() throw=(--ext "$ROOT")
  [ "$DRY" = 1 ] && args=(--device cpu) && throw+=(--no-cuda --no-minimal)
  [ "${THROW_MINIMAL:-1}" = 0 ] && throw+=(--no-minimal)     # its 40 s told what it had to
  timeout --kill-after=10 240 "$PY" scripts/gpu/gpu_diag.py "${args[@]}" >"$LOGS/diag.log" 2>&1 \
    || { echo "failed: see logs/diag.log"; return 1; }
  if [ -d "$DEVBUILD" ]; then    # FUSEDOPT_PREBUILT: this machine's build, started by part build
    local waited=0
    while [ ! -f "$DEVBUILD/rc" ] && [ $waited -lt 240 ] && [ "$(left)" -gt 100 ]; do
      sleep 5; waited=$((waited + 5))
    done
    throw+=(--ext "$DEVBUILD")
    echo "this machine's build: rc $(cat "$DEVBUILD/rc" 2>/dev/null || echo "unfinished after ${waited}s")" >>"$WORK/throw.log"
  fi
  timeout --kill-after=10 $(( $(left) - 5 )) "$PY" scripts/gpu/gpu_throw.py "${throw[@]}" \
    >>"$WORK/throw.log" 2>&1
  local rc=$? crashes
  crashes=$(grep -c "CRASHED\|NOT RAISED\|WRONG MESSAGE" "$WORK/throw.log" || true)
  echo "$crashes bad-input cases crashed or raised the wrong thing (throw.log); host times in logs/diag.log"
  return $rc
}

part_bench() {
  local target rc=0
  local list
  list=$("$PY" scripts/gpu/gpu_targets.py --list $([ "$DRY" = 1 ] && echo --dry)) || return 1
  while IFS='|' read -r target args; do
    [ -n "$target" ] || continue
    local budget=$(( $(left) - 5 ))
    if [ "$budget" -lt 20 ]; then echo "$target: skipped, no time left" >&2; continue; fi
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$budget" "$PY" -m fusedopt.bench $args \
      --json "$WORK/results/bench/$target.json" --plot "$WORK/results/bench/$target.png" \
      >>"$LOGS/bench.log" 2>&1 || { rc=1; echo "$target: failed" >&2; }
  done <<<"$list"
  # the Triton launch-size rule: block size x warps, with registers and programs per SM
  local blocks_args=(--json "$WORK/results/bench/triton-blocks.json")
  [ "$DRY" = 1 ] && blocks_args+=(--device cpu --numel 20k --tensors 4)
  if [ "$(left)" -gt 40 ]; then
    timeout --kill-after=10 $(( $(left) - 10 )) "$PY" bench/triton_blocks.py "${blocks_args[@]}" \
      >>"$LOGS/bench.log" 2>&1 || { rc=1; echo "triton_blocks: failed" >&2; }
  fi
  "$PY" scripts/gpu/gpu_targets.py --report "$WORK/results/bench" >"$WORK/targets.md" || rc=1
  echo "$(grep -c '| met |' "$WORK/targets.md") met, $(grep -c '| MISSED |' "$WORK/targets.md") missed, $(grep -c '| not measured |' "$WORK/targets.md") not measured (targets.md)"
  return $rc
}

part_e2e() {
  local wh=${E2E_WHEELS:-$ROOT/.whl/e2e} out=$WORK/results/e2e rc=0
  mkdir -p "$out"
  local pip=("$PY" -m pip install -q --no-index --find-links "$wh")
  if [ ! -f "$wh/requirements.txt" ]; then
    echo "no wheelhouse at $wh (scripts/gpu/wheelhouse.sh, carried as .whl): mmengine as installed" >&2
  elif [ "$DRY" = 1 ]; then   # CI's Python is not to be changed: the install resolves, no more
    "${pip[@]}" --dry-run -r "$wh/requirements.txt" >>"$LOGS/e2e.log" 2>&1 \
      || { echo "pip --no-index --dry-run from $wh failed (logs/e2e.log)"; return 1; }
  else
    "${pip[@]}" -r "$wh/requirements.txt" >>"$LOGS/e2e.log" 2>&1 \
      || { echo "pip --no-index from $wh failed (logs/e2e.log)"; return 1; }
    # torchvision requires torch==2.11.0 exactly: not fatal, the model falls back to its layout
    [ -f "$wh/optional.txt" ] && { "${pip[@]}" -r "$wh/optional.txt" >>"$LOGS/e2e.log" 2>&1 \
      || echo "torchvision not installed: r3d_18's layout built in (logs/e2e.log)" >&2; }
  fi
  "$PY" -c "import mmengine.runner" >>"$LOGS/e2e.log" 2>&1 \
    || echo "mmengine's Runner does not import (logs/e2e.log): the runner rows are skipped" >&2
  # in order of importance: the seed's SGD in fp32 (every eager route, graph, spread, resume),
  # bf16 (graph with cache_enabled=False), the compiled step (inductor compiles for a minute or
  # more), fp16 (GradScaler), AdamW. NAME|ARGS
  local runs
  if [ "$DRY" = 1 ]; then
    runs="sgd-fp32|--tiny --dry --device cpu --spread-seeds 1 --rows runner:torch-fused,runner:fusedopt-cpu,standalone:fusedopt-cpu,graph:fusedopt-cpu"
  else
    local size="--iters 40 --epoch-length 20 --warmup-iters 5"
    runs="sgd-fp32|$size --rows runner:torch-foreach,runner:torch-fused,runner:fusedopt-cuda,runner:fusedopt-triton,standalone:fusedopt-cuda,graph:fusedopt-cuda
sgd-bf16|$size --precision bf16 --rows runner:torch-fused,runner:fusedopt-cuda,standalone:fusedopt-cuda,graph:fusedopt-cuda --spread-seeds 2 --resume-check none
sgd-fp32-compile|$size --name e2e-sgd-fp32-compile --rows runner:torch-fused,compile:fusedopt-cuda,compile:torch-fused --spread-seeds 0 --resume-check none
sgd-fp16|$size --precision fp16 --rows runner:torch-fused,runner:fusedopt-cuda,runner:fusedopt-triton --spread-seeds 2 --resume-check runner:fusedopt-cuda
adamw-fp32|$size --optimizer adamw --rows runner:torch-fused,runner:fusedopt-cuda,standalone:fusedopt-cuda --spread-seeds 2 --resume-check none"
  fi
  local t0=$SECONDS name args
  while IFS='|' read -r name args; do
    [ -n "$name" ] || continue
    local budget=$(( ${E2E_BUDGET:-300} - (SECONDS - t0) ))
    [ "$budget" -gt $(( $(left) - 5 )) ] && budget=$(( $(left) - 5 ))
    if [ "$budget" -lt 30 ]; then echo "$name: skipped, no time left" >&2; continue; fi
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$budget" "$PY" -m fusedopt.bench e2e $args --out "$out" \
      >>"$LOGS/e2e.log" 2>&1 || { rc=1; echo "$name: failed or timed out (logs/e2e.log)" >&2; }
  done <<<"$runs"
  "$PY" - "$out" <<'EOF2'
import glob, json, sys
notes = []
for path in sorted(glob.glob(sys.argv[1] + "/e2e-*.json")):
    doc = json.load(open(path))
    o, bits = doc["options"], []
    for r in doc["results"]:
        if r["status"] != "ok" or r["row"] == doc["reference"]:
            continue
        a, s, rs = r.get("agreement") or {}, r.get("syncs") or {}, r.get("resume")
        bit = r["row"]
        if r.get("optim_speedup_vs_ref"):
            bit += f" optimizer {r['optim_speedup_vs_ref']:.2f}x"
        if r.get("iter_speedup_vs_ref"):
            bit += f" iteration {r['iter_speedup_vs_ref']:.2f}x"
        if "within_spread" in a:
            bit += " within spread" if a["within_spread"] else " OUTSIDE spread"
        if s:
            bit += f", {s.get('cuda', s['ops']).get('optimizer', 0)} syncs"
        if rs:
            bit += ", resume " + ("bitwise" if rs["bitwise"] else f"diff {rs['max_abs_diff']:.1e}")
        if r.get("vs_eager"):
            bit += ", vs eager " + ("bitwise" if r["vs_eager"]["bitwise"] else
                                   f"diff {r['vs_eager']['max_abs_diff']:.1e}")
        bits.append(bit)
    notes.append(f"{o['optimizer']}-{o['precision']} vs {doc['reference']}: " + "; ".join(bits))
print(" / ".join(notes) or "no e2e result")
EOF2
  return $rc
}

run_part build 150 part_build
run_part tests 90 part_tests
run_part compile 60 part_compile
run_part bench 60 part_bench
run_part lowprec 60 part_lowprec
run_part diag 60 part_diag
run_part stress 25 part_stress
run_part sanitize 60 part_sanitize
run_part e2e "$([ "$DRY" = 1 ] && echo 40 || echo 120)" part_e2e

# a background build still running (FUSEDOPT_PREBUILT, diag not asked for) ends with the script
for pid in $(pgrep -f "setup.py build_ext --inplace" 2>/dev/null); do
  [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DEVBUILD" ] && kill -- "-$pid" 2>/dev/null
done

# ---- output: at most 8 files ------------------------------------------------------------------
{
  echo "# gpu_check $([ "$DRY" = 1 ] && echo '(dry run, CPU)') — $(( SECONDS - START ))s of a ${BUDGET}s budget"
  echo
  echo '```'
  cat "$LOGS/environment.txt"
  echo '```'
  echo
  echo "| part | status | seconds | note |"
  echo "| --- | --- | --- | --- |"
  cat "$SUMMARY"
  for p in build tests compile bench lowprec diag stress sanitize e2e; do
    wants "$p" || echo "| $p | not asked for (--parts $PARTS) | 0 | |"
  done
  if [ -s "$LOGS/tests_live.log" ] && grep -q "Thread 0x\|Current thread" "$LOGS/tests_live.log"; then
    echo
    echo "A test crashed or ran past ${FUSEDOPT_TEST_TIMEOUT}s: logs/tests_live.log has its stack."
  fi
} >"$OUT/summary.md"
[ -f "$LOGS/tests.log" ] && cat "$LOGS/tests.log" "$LOGS/tests_live.log" >"$OUT/tests.log" 2>/dev/null
[ -f "$LOGS/sanitize.log" ] && cp "$LOGS/sanitize.log" "$OUT/sanitize.log"
[ -f "$WORK/targets.md" ] && cp "$WORK/targets.md" "$OUT/targets.md"
[ -f "$WORK/lowprec.md" ] && cp "$WORK/lowprec.md" "$OUT/lowprec.md"
for f in compile.md throw.log; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f" && cp "$WORK/$f" "$WORK/results/$f"
done
cp "$OUT/summary.md" "$WORK/results/summary.md"
tar -czf "$OUT/results.tar.gz" -C "$WORK" results
cat "$OUT/summary.md"
exit $STATUS
