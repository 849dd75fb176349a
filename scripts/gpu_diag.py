"""Diagnostics of scripts/gpu_check.sh that no test asserts: where a CUDA step's host time goes,
and whether errors raised inside fusedopt._C reach Python as exceptions.

1. Host time of one step (no device sync inside the timed span), per tensor count: the whole
   ``opt.step()``, the bare extension call, and the cpu backend on CPU tensors of the same
   counts on the same host (its C++ glue checks the same things per tensor), with torch's fused
   AdamW for scale; then torch.profiler's CPU ops of the CUDA step.
2. Bad input to fusedopt._C, each in a subprocess: a Bucket whose state shape differs from its
   params' (CPU and CUDA tensors), and a step with a malformed hyper-parameter table. Each must
   raise, not crash. On a GPU, a minimal load_inline extension then throws the same two kinds
   of exception, to tell a crash of every extension built there from one of fusedopt._C alone.
Prints plain text (the log is read by a person).

usage: python scripts/gpu_diag.py [--device cuda]
"""
import argparse
import subprocess
import sys
import time

import torch

import fusedopt

BAD_INPUT = {
    "Bucket: a state of another shape than its param (CPU)": """
import torch; from fusedopt import _C
ps = [torch.zeros(5) for _ in range(2)]
_C.Bucket(ps, [[torch.zeros(4) for p in ps]], [torch.zeros(()) for _ in ps], [0, 0], [])""",
    "Bucket: a state of another shape than its param (CUDA)": """
import torch; from fusedopt import _C
ps = [torch.zeros(5, device='cuda') for _ in range(2)]
_C.Bucket(ps, [[torch.zeros(4, device='cuda') for p in ps]],
          [torch.zeros((), device='cuda') for _ in ps], [0, 0], [])""",
    "cuda_adam_step: hp of the wrong dtype": """
import torch; from fusedopt import _C
p = [torch.nn.Parameter(torch.zeros(5, device='cuda'))]; p[0].grad = torch.ones(5, device='cuda')
b = _C.Bucket(p, [[torch.zeros(5, device='cuda')], [torch.zeros(5, device='cuda')]],
              [torch.zeros((), device='cuda')], [0], [])
_C.cuda_adam_step(b, torch.zeros(1, 5, device='cuda'), False, False, True, None, None, None)""",
}


def host_us(fn, rounds=50, sync=None):
    fn()
    times = []
    for _ in range(rounds):
        if sync:
            sync()
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return sorted(times)[len(times) // 2]


def make(n, device, per_param, backend):
    params = [torch.nn.Parameter(torch.zeros(16, device=device)) for _ in range(n)]
    for p in params:
        p.grad = torch.ones_like(p)
    groups = ([{"params": [p], "lr": 1e-3 * (1 + i % 7)} for i, p in enumerate(params)]
              if per_param else [{"params": params}])
    if backend == "torch-fused":
        return torch.optim.AdamW(groups, fused=True)
    return fusedopt.FusedAdamW(groups, backend=backend)


def host_times(device):
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    print("host time of one AdamW step, median us (16-element tensors, grads set)")
    for n in (100, 465, 1000):
        for per_param in (False, True):
            row = [f"  {n:5d} tensors, {'per-param groups' if per_param else '1 group':16s}"]
            opt = make(n, device, per_param, "cuda")
            row.append(f"cuda step {host_us(opt.step, sync=sync):8.1f}")
            b = opt._buckets[0]
            hp = opt.hparam_tables[b.spec.device]
            call = lambda: b.backend.adam_step(b.handle, hp, amsgrad=False, maximize=False,
                                               decoupled=True)
            row.append(f"bare backend adam_step {host_us(call, sync=sync):8.1f}")
            cpu = make(n, torch.device("cpu"), per_param, "cpu")
            row.append(f"cpu backend step {host_us(cpu.step):8.1f}")
            fused = make(n, device, per_param, "torch-fused")
            row.append(f"torch fused {host_us(fused.step, rounds=10, sync=sync):8.1f}")
            print(", ".join(row), flush=True)
    opt = make(465, device, True, "cuda")
    opt.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            opt.step()
    print("torch.profiler, 20 steps of 465 per-param groups (CPU ops):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


MINIMAL_THROW = r'''
import torch.utils.cpp_extension as ce
src = """
#include <torch/extension.h>
#include <stdexcept>
void torch_check() { TORCH_CHECK(false, "a TORCH_CHECK from a minimal extension"); }
void std_throw() { throw std::runtime_error("a std::runtime_error from a minimal extension"); }
"""
m = ce.load_inline("fusedopt_diag_throw", cpp_sources=[src],
                   functions=["torch_check", "std_throw"], verbose=False)
getattr(m, WHICH)()
'''


def bad_input(cuda):
    print("bad input to fusedopt._C (each in a subprocess):")
    for what, code in BAD_INPUT.items():
        if not cuda and "cuda" in code:
            continue
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        verdict = ("raised" if done.returncode == 1 and "Error" in last
                   else "CRASHED" if done.returncode < 0 else f"NOT RAISED (exit {done.returncode})")
        print(f"  {what}: {verdict}: {last}", flush=True)
    if cuda:   # which layer crashes: any extension built there, or only fusedopt._C
        for which in ("std_throw", "torch_check"):
            code = MINIMAL_THROW.replace("WHICH", repr(which))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=300)
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
            verdict = ("raised" if done.returncode == 1 and "Error" in last
                       else f"crashed (exit {done.returncode}; not counted)")
            print(f"  a minimal load_inline extension, {which}: {verdict}: {last}", flush=True)


def build_environment():
    """What the extension was built with and what the process loaded: on the first GPU runs
    (2026-11-27) every C++ exception of fusedopt._C crashed the process there while the same
    sources raise cleanly with g++ 12 and the same torch elsewhere."""
    import shutil
    import torch.utils.cpp_extension as ce
    from fusedopt import _C
    print(f"torch {torch.__version__}, CUDA_HOME {ce.CUDA_HOME}, torch built with "
          f"{torch.__config__.show().splitlines()[1].strip() if torch.__config__.show() else '?'}")
    for cc in ("c++", "g++", "gcc"):
        if shutil.which(cc):
            version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
            print(f"{cc}: {version.splitlines()[0] if version else '?'}")
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "libstdc++" in line or "libgcc_s" in line})
    print(f"loaded: {libs}; fusedopt._C: {_C.__file__}")
    abi = subprocess.run(["sh", "-c", f"strings {_C.__file__} | grep -o 'cxxabi[0-9]*' | sort -u"],
                         capture_output=True, text=True).stdout.split()
    print(f"pybind11 ABI tags in fusedopt._C: {abi}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    build_environment()
    device = torch.device(args.device)
    if device.type == "cuda":
        host_times(device)
    else:
        print("dry: no CUDA device; the CUDA host times need one")
        opt = make(100, device, True, "cpu")
        print(f"cpu backend, 100 per-param groups: {host_us(opt.step):.1f} us")
    bad_input(device.type == "cuda")


if __name__ == "__main__":
    main()
