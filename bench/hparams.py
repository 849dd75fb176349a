"""Hyper-parameter writes and many param groups: fusedopt against torch and mmengine, side by side
in one process (issue 20's targets; Note [one truth], fusedopt/_hparams.py).

    python bench/hparams.py [--groups 1000] [--numel 16] [--threads 2] [--construct 10000]
                            [--json PATH]

Each case times one training iteration's optimizer work on G one-tensor groups of N elements
(grads set once, untimed), both implementations in the same rounds (interleaved, order rotated):

* ``torch-scheduler``: ``sched.step(); opt.step()`` with torch's CosineAnnealingLR, FusedAdamW
  against torch.optim.AdamW(fused=True). Every step writes every group's lr (target >= 10x).
* ``mmengine``: mmengine's OptimWrapper around the optimizer, mmengine's CosineAnnealingLR and
  ``get_lr()`` (an mmengine Runner calls it every iteration): ``wrapper.step();
  sched.step(); wrapper.get_lr()`` (target >= 10x).
* ``scheduler``: one scheduler step alone on a FusedAdamW: fusedopt's CosineAnnealingLR against
  mmengine's (target >= 50x).
* ``step``: ``opt.step()`` with no write (the no-write cost), FusedAdamW against torch fused.
* ``write-one``: ``opt.param_groups[G // 2]['lr'] = x; opt.step()``: one write costs O(1).
* ``construct``: building the optimizer on ``--construct`` one-tensor groups, once each
  (torch's construction is quadratic in the number of groups; target >= 10x).

Prints a table and writes JSON (fusedopt.bench.report.provenance: device, revision with its dirty
flag, versions; then options and one record per case).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fusedopt  # noqa: E402
from fusedopt.bench.measure import per_call_s  # noqa: E402
from fusedopt.bench.report import provenance  # noqa: E402


def params(groups, numel):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(numel)) for _ in range(groups)]
    for p in ps:
        p.grad = torch.randn(numel)
    return ps


def adamw(kind, ps):
    pgs = [{"params": [p], "lr": 1e-3 * (1 + i % 7)} for i, p in enumerate(ps)]
    if kind == "fusedopt":
        return fusedopt.FusedAdamW(pgs, lr=1e-3)
    return torch.optim.AdamW(pgs, lr=1e-3, fused=True)


def case_torch_scheduler(kind, ps):
    opt = adamw(kind, ps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10 ** 8)

    def run():
        sched.step()
        opt.step()
    return run


def case_mmengine(kind, ps):
    from mmengine.optim import CosineAnnealingLR, OptimWrapper
    wrapper = OptimWrapper(adamw(kind, ps))
    sched = CosineAnnealingLR(wrapper, T_max=10 ** 8, by_epoch=False)

    def run():
        wrapper.step()
        sched.step()
        wrapper.get_lr()
    return run


def case_scheduler(kind, ps):
    opt = adamw("fusedopt", ps)
    opt.step()
    if kind == "fusedopt":
        sched = fusedopt.schedulers.CosineAnnealingLR(opt, T_max=10 ** 8, by_epoch=False)
    else:
        from mmengine.optim import CosineAnnealingLR
        sched = CosineAnnealingLR(opt, T_max=10 ** 8, by_epoch=False)
    return sched.step


def case_step(kind, ps):
    return adamw(kind, ps).step


def case_write_one(kind, ps):
    opt = adamw(kind, ps)
    group = opt.param_groups[len(opt.param_groups) // 2]
    lrs = [1e-3, 2e-3]

    def run():
        group["lr"] = lrs[0]
        lrs.reverse()
        opt.step()
    return run


CASES = {"torch-scheduler": (case_torch_scheduler, ("fusedopt", "torch"), 10),
         "mmengine": (case_mmengine, ("fusedopt", "torch"), 10),
         "scheduler": (case_scheduler, ("fusedopt", "mmengine"), 50),
         "step": (case_step, ("fusedopt", "torch"), None),
         "write-one": (case_write_one, ("fusedopt", "torch"), None)}


def construct(kind, groups):
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    pgs = [{"params": [p]} for p in ps]
    t0 = time.perf_counter()
    if kind == "fusedopt":
        fusedopt.FusedAdamW(pgs, lr=1e-3)
    else:
        torch.optim.AdamW(pgs, lr=1e-3)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--numel", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=20, help="iterations per timing")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--construct", type=int, default=10000,
                    help="groups of the construction case (0: skip it)")
    ap.add_argument("--json", default=None, help="default: ./bench-hparams-cpu.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    ps = params(args.groups, args.numel)
    runs = {}
    for name in args.cases:
        make, impls, _ = CASES[name]
        for impl in impls:
            runs[(name, impl)] = make(impl, ps)
    for fn in runs.values():              # warm up: state, tables, first scheduler steps
        for _ in range(3):
            fn()
    samples = {k: [] for k in runs}
    keys = list(runs)
    for r in range(args.rounds):          # interleaved rounds, order rotated every round
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            samples[key].append(per_call_s(runs[key], args.inner))
    records = []
    print(f"{args.groups} groups x {args.numel} elements, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'case':16s} {'fusedopt us':>12s} {'other':>9s} {'other us':>10s} {'ratio':>8s}  "
          "target")
    for name in args.cases:
        _, (ours, other), target = CASES[name]
        med = {impl: statistics.median(samples[(name, impl)]) * 1e6 for impl in (ours, other)}
        ratio = med[other] / med[ours]
        records.append(dict(case=name, groups=args.groups, numel=args.numel,
                            fusedopt_us=med[ours], other=other, other_us=med[other],
                            ratio=ratio, target=target,
                            met=None if target is None else ratio >= target,
                            fusedopt_p20_us=sorted(samples[(name, ours)])[args.rounds // 5] * 1e6,
                            other_p20_us=sorted(samples[(name, other)])[args.rounds // 5] * 1e6))
        print(f"{name:16s} {med[ours]:12.1f} {other:>9s} {med[other]:10.1f} {ratio:7.1f}x  "
              f"{'' if target is None else f'>= {target}x'}")
    if args.construct:
        times = {impl: construct(impl, args.construct) for impl in ("fusedopt", "torch")}
        ratio = times["torch"] / times["fusedopt"]
        records.append(dict(case="construct", groups=args.construct, fusedopt_s=times["fusedopt"],
                            other="torch", other_s=times["torch"], ratio=ratio, target=10,
                            met=ratio >= 10))
        print(f"construct {args.construct} groups: fusedopt {times['fusedopt']:.3f} s, torch "
              f"{times['torch']:.3f} s: {ratio:.1f}x (target >= 10x)")
    import mmengine
    info = dict(provenance(torch.device("cpu")), mmengine=mmengine.__version__,
                options=vars(args), records=records,
                command=" ".join([os.path.basename(sys.executable)] + sys.argv))
    out = args.json or "bench-hparams-cpu.json"
    with open(out, "w") as f:
        json.dump(info, f, indent=2, default=lambda x: None if isinstance(x, float)
                  and math.isnan(x) else str(x))
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
