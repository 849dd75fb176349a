"""Diagnostics of scripts/gpu_check.sh that no test asserts: where a CUDA step's host time goes.
(Whether errors raised inside fusedopt._C reach Python as exceptions: scripts/gpu/gpu_throw.py.)

Host time of one step (no device sync inside the timed span), per tensor count: the whole
``opt.step()``, the bare extension call, and the cpu backend on CPU tensors of the same counts on
the same host (its C++ glue checks the same things per tensor), with torch's fused AdamW for
scale; then torch.profiler's CPU ops of the CUDA step; then one step of every class.
Prints plain text (the log is read by a person).

usage: python scripts/gpu/gpu_diag.py [--device cuda]
"""
import argparse
import time

import torch

import fusedopt


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


def class_times(device):
    """Host time of one step of every class (Lion, LARS and LAMB included: two launches per
    bucket for the two-stage ones, and LAMB's global clip), 465 per-param groups."""
    from fusedopt.algorithms import optimizer_classes
    print("host time of one step per class, median us (465 per-param groups of 16 elements)")
    for name, cls in optimizer_classes().items():
        params = [torch.nn.Parameter(torch.zeros(16, device=device)) for _ in range(465)]
        for p in params:
            p.grad = torch.ones_like(p)
        opt = cls([{"params": [p], "lr": 1e-3 * (1 + i % 7)} for i, p in enumerate(params)],
                  **({"lr": 0.1} if name == "FusedLARS" else {}), backend="cuda")
        print(f"  {name:11s} {host_us(opt.step, sync=torch.cuda.synchronize):8.1f}", flush=True)


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
            call = lambda: b.backend.step(b.handle, hp, b.algo, b.flags)
            row.append(f"bare backend step {host_us(call, sync=sync):8.1f}")
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        host_times(device)
        class_times(device)
    else:
        print("dry: no CUDA device; the CUDA host times need one")
        opt = make(100, device, True, "cpu")
        print(f"cpu backend, 100 per-param groups: {host_us(opt.step):.1f} us")


if __name__ == "__main__":
    main()
