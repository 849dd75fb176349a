"""Stress case of scripts/gpu_check.sh: many tensors of random sizes in one bucket against torch's
fused AdamW.

The set: ``--tensors`` params of random sizes (empty and 1-element ones included), about a third
of them views into one flat buffer at element offsets that are not multiples of 16 bytes (their
grads too), across three groups with different hyper-parameters. Over ``--steps`` steps some
grads are None, and one step runs with found_inf set (GradScaler's contract: grad_scale and
found_inf attributes), which must change nothing. Checked: every param and state tensor against
torch (tests/tolerances.py) and every step counter exactly. Prints one JSON line; exit 1 on a
mismatch.

usage: python scripts/gpu/gpu_stress.py --backend cuda|triton|cpu [--device cuda] [--tensors 1200]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "tests"))
from tolerances import TOLERANCE  # noqa: E402

import fusedopt  # noqa: E402

GROUPS = [dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.0),
          dict(lr=1e-3, eps=1e-6, amsgrad=False)]


def sizes(n, max_numel, gen):
    """Random sizes: ~5% empty, ~5% one element, the rest log-uniform up to max_numel."""
    out = []
    for _ in range(n):
        u = torch.rand((), generator=gen).item()
        if u < 0.05:
            out.append(0)
        elif u < 0.10:
            out.append(1)
        else:
            out.append(int(max_numel ** torch.rand((), generator=gen).item()) + 1)
    return out


def views_into(flat, numels, offsets):
    """Tensors laid end to end in ``flat`` after the given element gaps."""
    out, at = [], 0
    for n, gap in zip(numels, offsets):
        at += gap
        out.append(flat[at:at + n])
        at += n
    return out


def make_set(values, misaligned, dtype, device):
    """One copy of the param set: same values, same misalignment."""
    numels = [v.numel() for v in values]
    gaps = [1 + (i % 3) if i in misaligned else 0 for i in range(len(numels))]
    flat = torch.zeros(sum(numels) + sum(gaps) + 1, dtype=dtype, device=device)
    shared = views_into(flat, numels, gaps)
    out = []
    for i, v in enumerate(values):
        t = shared[i] if i in misaligned else torch.empty(numels[i], dtype=dtype, device=device)
        out.append(torch.nn.Parameter(t.copy_(v)))
    return out


def set_grads(sets, misaligned, step, gen_seed):
    gen = torch.Generator().manual_seed(gen_seed + step)
    n = len(sets[0])
    none = {i for i in range(n) if (i + step) % 7 == 3}
    for params in sets:
        dtype, device = params[0].dtype, params[0].device
        numels = [p.numel() for p in params]
        gaps = [2 if i in misaligned else 0 for i in range(n)]
        flat = torch.empty(sum(numels) + sum(gaps) + 1, dtype=dtype, device=device)
        grads = views_into(flat, numels, gaps)
        for i, p in enumerate(params):
            p.grad = None if i in none else grads[i]
    values = torch.randn(sum(p.numel() for p in sets[0]), generator=gen, dtype=torch.float64)
    for params in sets:
        at = 0
        for p in params:
            if p.grad is not None:
                p.grad.copy_(values[at:at + p.numel()])
            at += p.numel()
    return none


def groups_of(params):
    groups = [dict(g, params=[]) for g in GROUPS]
    for i, p in enumerate(params):
        groups[i % 3]["params"].append(p)
    return groups


def triton_occupancy():
    """Registers, spills and resident programs per SM of every Triton kernel compiled so far
    (a GPU only: the interpreter compiles nothing)."""
    if not torch.cuda.is_available():
        return None
    from fusedopt.kernels import norm_kernel, update_kernel
    props = torch.cuda.get_device_properties(0)
    regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
    out = []
    for jit in (update_kernel, norm_kernel):   # the algorithm is in each cache key
        for compiled in jit.device_caches[torch.cuda.current_device()][0].values():
            compiled._init_handles()
            threads = compiled.metadata.num_warps * 32
            out.append(dict(kernel=jit.fn.__name__, regs=compiled.n_regs,
                            spills=compiled.n_spills, warps=compiled.metadata.num_warps,
                            programs_per_sm=min(regs_per_sm // max(1, compiled.n_regs * threads),
                                                2048 // threads)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tensors", type=int, default=1200)
    ap.add_argument("--max-numel", type=int, default=1 << 17)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp64"])
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "fp64": torch.float64}[args.dtype]
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(1234)
    numels = sizes(args.tensors, args.max_numel, gen)
    misaligned = {i for i in range(len(numels)) if i % 3 == 1}
    values = [torch.randn(n, generator=gen, dtype=torch.float64) for n in numels]
    ours, theirs = make_set(values, misaligned, dtype, device), make_set(values, misaligned,
                                                                        dtype, device)
    opt = fusedopt.FusedAdamW(groups_of(ours), backend=args.backend)
    ref = torch.optim.AdamW(groups_of(theirs), fused=True)
    skipped_step = args.steps // 2
    expected_steps = [0] * len(numels)
    start = time.perf_counter()
    for step in range(args.steps):
        none = set_grads([ours, theirs], misaligned, step, 99)
        for o in (opt, ref):
            if step == skipped_step:
                o.grad_scale = torch.ones((), device=device)
                o.found_inf = torch.ones((), device=device)
            o.step()
            if step == skipped_step:
                del o.grad_scale, o.found_inf
        if step != skipped_step:
            for i in range(len(numels)):
                expected_steps[i] += i not in none
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rtol, atol = TOLERANCE[dtype]
    problems = []

    def check(a, b, what):
        if not torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True):
            diff = (a.double() - b.double()).abs().max().item()
            problems.append(f"{what}: max |diff| {diff:.3g}")

    for i, (p, q) in enumerate(zip(ours, theirs)):
        check(p.detach(), q.detach(), f"param {i} (numel {p.numel()})")
        s, t = opt.state.get(p, {}), ref.state.get(q, {})
        if bool(s) != bool(t):
            problems.append(f"param {i}: state {'present' if s else 'missing'} in fusedopt only")
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in t:
                check(s[key], t[key], f"param {i} state[{key!r}]")
        if t:
            got = int(s["step"].item())
            if got != expected_steps[i] or int(t["step"].item()) != expected_steps[i]:
                problems.append(f"param {i}: step {got}, torch {int(t['step'].item())}, "
                                f"expected {expected_steps[i]}")
    report = dict(backend=args.backend, device=str(device), dtype=args.dtype,
                  occupancy=triton_occupancy() if args.backend == "triton" else None,
                  tensors=len(numels), numel=sum(numels), empty=numels.count(0),
                  misaligned=len(misaligned), steps=args.steps, skipped_step=skipped_step,
                  seconds=round(seconds, 3), problems=len(problems), first=problems[:10],
                  ok=not problems)
    print(json.dumps(report))
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
