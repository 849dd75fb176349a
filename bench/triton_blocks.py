"""Block size and warp count of the Triton update kernel (the launch-size rule of
fusedopt/backends/triton.py), measured: one fp32 AdamW bucket, each (BLOCK, num_warps) variant
timed with CUDA events over the same tensors, its registers, spills and resident programs per SM
read from the compiled kernel.

usage: python bench/triton_blocks.py [--numel 500M] [--tensors 100] [--json PATH]
       (--device cpu --numel 20k: the same flow under TRITON_INTERPRET=1, for scripts/gpu_check.sh
       --dry; its times mean nothing)
"""
import argparse
import json
import sys

import torch

import fusedopt
from fusedopt.bench.cli import _count
from fusedopt.backends import triton as tb
from fusedopt.bench.measure import Timer, quantile
from fusedopt.bench.report import provenance
from fusedopt.kernels import update_kernel

VARIANTS = [(512, 2), (512, 4), (1024, 2), (1024, 4), (1024, 8), (2048, 4), (2048, 8)]


def time_steps(opt, device, steps):
    """Median ms of a step (measure.Timer: CUDA events); NaN off CUDA, where only the flow runs."""
    opt.step()                                       # compile and warm up
    if device.type != "cuda":
        return float("nan")
    timer = Timer(device)
    return quantile([timer(opt.step) for _ in range(steps)], 0.5)


def compiled_kernels():
    """Triton's JIT cache of the update kernel on this GPU: {key: compiled kernel}."""
    if not torch.cuda.is_available():
        return {}
    return dict(update_kernel.device_caches[torch.cuda.current_device()][0])


def occupancy(compiled, warps):
    """(registers, spills, programs per SM) of a compiled kernel."""
    props = torch.cuda.get_device_properties(0)
    regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
    compiled._init_handles()
    threads = warps * 32
    return (compiled.n_regs, compiled.n_spills,
            min(regs_per_sm // max(1, compiled.n_regs * threads), 2048 // threads))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=_count, default=_count("500M"))
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.numel // args.tensors
    params = [torch.nn.Parameter(torch.randn(n, device=device)) for _ in range(args.tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    rows = []
    block_size, default_warps = tb.block_size, tb.NUM_WARPS
    default_block = block_size(torch.float32)
    try:
        for block, warps in VARIANTS:
            tb.block_size = lambda dtype, block=block: block
            tb.NUM_WARPS = warps
            opt = fusedopt.FusedAdamW(params, weight_decay=0.01, backend="triton")
            before = compiled_kernels()
            ms = time_steps(opt, device, args.steps)
            new = [k for key, k in compiled_kernels().items() if key not in before]
            regs, spills, programs = occupancy(new[0], warps) if new else (None, None, None)
            gbps = 28 * args.numel / (ms * 1e-3) / 1e9 if ms == ms else None
            rows.append(dict(block=block, warps=warps, median_ms=ms, gbps=gbps, regs=regs,
                             spills=spills, programs_per_sm=programs,
                             default=(block, warps) == (default_block, default_warps)))
            print(json.dumps(rows[-1]), flush=True)
            del opt
    finally:
        tb.block_size, tb.NUM_WARPS = block_size, default_warps
    doc = dict(provenance(device), numel=args.numel, tensors=args.tensors, variants=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
