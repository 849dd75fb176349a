"""The C++ part of a cpu step alone, per tensor (issue 28; Note [pack-time checks] in csrc/bucket.h,
Note [persistent steps] in csrc/cpu/ops.cpp), with its tensor objects in cache and after 40 MB were
written between two steps (as a forward and backward would leave them: cold).

    python bench/host_step.py                       # 16 .. 5000 64-element AdamW tensors
    python bench/host_step.py --counts 465,5000 --json r.json

`fusedopt-bench --preset host` times the whole `opt.step()` beside torch fused; this times only the
bucket's `_C.step` (the Python around it is O(1) per step), on one thread (the tensors are too
small for a parallel region), median of --rounds steps of each kind, alternated. ns per tensor is
the median step over the tensor count.
"""
import argparse
import json
import statistics
import time

import torch

import fusedopt
from fusedopt.bench import report


def per_tensor_ns(count, rounds, junk):
    params = [torch.nn.Parameter(torch.randn(64)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(64)
    opt = fusedopt.FusedAdamW([{"params": [p]} for p in params], lr=1e-3, backend="cpu")
    for _ in range(3):
        opt.step()
    (bucket,) = opt._buckets

    def c_step():
        bucket.backend.step(bucket.handle, bucket.hp, bucket.algo, bucket.flags,
                            clip_coef=None, inv_scale=None, found_inf=None)

    warm, cold = [], []
    for _ in range(rounds):
        t = time.perf_counter_ns()
        c_step()
        warm.append(time.perf_counter_ns() - t)
        junk.add_(1)                       # 40 MB written: the step's objects leave the caches
        t = time.perf_counter_ns()
        c_step()
        cold.append(time.perf_counter_ns() - t)
    return statistics.median(warm) / count, statistics.median(cold) / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="16,152,465,1000,5000")
    ap.add_argument("--rounds", type=int, default=61)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    junk = torch.zeros(40 << 20, dtype=torch.uint8)
    results = []
    for count in (int(c) for c in args.counts.split(",")):
        warm, cold = per_tensor_ns(count, args.rounds, junk)
        results.append(dict(tensors=count, in_cache_ns=warm, cold_ns=cold))
        print(f"{count:5d} tensors: {warm:6.0f} ns/tensor in cache, {cold:6.0f} cold", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           args=vars(args), **report.provenance("cpu"), results=results), f,
                      indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
