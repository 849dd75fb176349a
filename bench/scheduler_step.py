"""One parameter-scheduler step on an optimizer with many param groups: fusedopt's schedulers
vs mmengine's, side by side in one process (issue 6: target >= 50x at 1000 groups).

    python bench/scheduler_step.py [--groups 1000] [--device cpu|cuda] [--json PATH]

What is timed, per schedule (each timing: the median over interleaved rounds):
* ``mmengine``: mmengine's scheduler ``step()`` on a FusedSGD with G groups (it writes G floats
  into the param_group dicts);
* ``mmengine+sync``: the same plus the table refresh those writes cost fusedopt's next
  ``step()`` (``opt.hparam_tables``);
* ``fusedopt``: fusedopt's scheduler ``step()`` on the same kind of optimizer (the values read
  from the dicts and written back into them and into the hyper-parameter table, one C loop each:
  Note [scheduler writes], fusedopt/schedulers/_slot.py);
* ``fusedopt+read``: the same plus reading every group's lr back (``[g['lr'] for g in
  opt.param_groups]``), against ``mmengine+read``;
* on mmengine's ``OptimWrapper(FusedSGD)`` (what an mmengine Runner hands the schedulers: with
  several groups it adds a dummy group, ``base_param_settings``, that both schedule);
* on ``torch.optim.SGD`` for reference (no device table: both write the dicts).
The headline ratio is mmengine / fusedopt for CosineAnnealingLR. Results: printed and written as
JSON (fusedopt.bench.report.provenance: device, revision with its dirty flag, versions; then
options and records) to bench/results/.
"""
import argparse
import json
import os
import statistics
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fusedopt  # noqa: E402
from fusedopt import schedulers as S  # noqa: E402
from fusedopt.bench.measure import per_call_s  # noqa: E402
from fusedopt.bench.report import provenance  # noqa: E402

KINDS = ("FusedSGD", "OptimWrapper(FusedSGD)", "SGD")
SCHEDULES = {     # long windows: every timed step is inside them
    "CosineAnnealingLR": dict(type="CosineAnnealingLR", T_max=10 ** 8, by_epoch=False),
    "CosineAnnealingLR(eta_min)": dict(type="CosineAnnealingLR", T_max=10 ** 8, eta_min=1e-6,
                                       by_epoch=False),
    "LinearLR": dict(type="LinearLR", start_factor=1e-3, end=10 ** 8, by_epoch=False),
    "PolyLR": dict(type="PolyLR", eta_min=1e-6, power=0.9, end=10 ** 8, by_epoch=False),
    "CosineAnnealingMomentum": dict(type="CosineAnnealingMomentum", T_max=10 ** 8, eta_min=0.8,
                                    by_epoch=False),
}


def make_opt(kind, groups, device):
    params = [torch.nn.Parameter(torch.zeros(4, device=device)) for _ in range(groups)]
    pgs = [{"params": [p], "lr": 0.1 * (1 + i % 7)} for i, p in enumerate(params)]
    if kind == "FusedSGD":
        opt = fusedopt.FusedSGD(pgs, lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.SGD(pgs, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()                    # pack once, build the tables
    return opt


def build(impl, cfg, opt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "fusedopt":
            return S.build_param_scheduler(opt, cfg)[0]
        import mmengine.optim  # noqa: F401  (registers mmengine's schedulers)
        from mmengine.registry import PARAM_SCHEDULERS
        return PARAM_SCHEDULERS.build(dict(cfg), default_args=dict(optimizer=opt))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=0, help="steps per timing (0: auto)")
    ap.add_argument("--schedules", nargs="*", default=list(SCHEDULES))
    ap.add_argument("--json", default=None,
                    help="default: bench/results/scheduler_step_<device>.json")
    args = ap.parse_args(argv)
    import mmengine
    device = torch.device(args.device)
    g = args.groups
    records = []
    warnings.simplefilter("ignore")
    for name in args.schedules:
        cfg = SCHEDULES[name]
        cases = {}
        for opt_kind in KINDS:
            for impl in ("mmengine", "fusedopt"):
                opt = make_opt(opt_kind.replace("OptimWrapper(", "").rstrip(")"), g, device)
                target = opt
                if opt_kind.startswith("OptimWrapper"):
                    from mmengine.optim import OptimWrapper
                    target = OptimWrapper(opt)
                sched = build(impl, cfg, target)
                groups = lambda opt=opt: opt.param_groups  # noqa: E731
                step = sched.step
                cases[(opt_kind, impl)] = step
                if "Fused" in opt_kind:
                    tables = lambda opt=opt: opt.hparam_tables  # noqa: E731
                    cases[(opt_kind, impl + "+sync")] = (
                        lambda step=step, tables=tables: (step(), tables()))
                cases[(opt_kind, impl + "+read")] = (
                    lambda step=step, groups=groups: (step(), [x["lr"] for x in groups()]))
        inner = args.inner or max(10, min(500, 100000 // g))
        samples = {k: [] for k in cases}
        for fn in cases.values():          # warm up
            for _ in range(3):
                fn()
        for _ in range(args.rounds):       # interleaved rounds: load on the machine hits all
            for key, fn in cases.items():
                samples[key].append(per_call_s(fn, inner, device))
        for (opt_kind, impl), ts in samples.items():
            records.append(dict(schedule=name, optimizer=opt_kind, impl=impl, groups=g,
                                median_us=statistics.median(ts) * 1e6,
                                p20_us=sorted(ts)[len(ts) // 5] * 1e6,
                                p80_us=sorted(ts)[(4 * len(ts)) // 5] * 1e6))
    by = {(r["schedule"], r["optimizer"], r["impl"]): r["median_us"] for r in records}
    print(f"device={device} groups={g} torch={torch.__version__} mmengine={mmengine.__version__}")
    print(f"{'schedule':28s} {'optimizer':23s} {'mmengine us':>12s} {'fusedopt us':>12s} "
          f"{'ratio':>8s}   {'+sync ratio':>11s} {'+read ratio':>11s}")
    ratios = {}
    for name in args.schedules:
        for opt_kind in KINDS:
            mm, fo = by[(name, opt_kind, "mmengine")], by[(name, opt_kind, "fusedopt")]
            ratio = mm / fo
            ratios[(name, opt_kind)] = ratio
            sync_r = (by[(name, opt_kind, "mmengine+sync")] / by[(name, opt_kind, "fusedopt+sync")]
                      if "Fused" in opt_kind else float("nan"))
            read_r = by[(name, opt_kind, "mmengine+read")] / by[(name, opt_kind, "fusedopt+read")]
            print(f"{name:28s} {opt_kind:23s} {mm:12.1f} {fo:12.2f} {ratio:7.1f}x   "
                  f"{sync_r:10.1f}x {read_r:10.1f}x")
    headline = ratios.get(("CosineAnnealingLR", "FusedSGD"))
    fused = {k: v for k, v in ratios.items() if "Fused" in k[1]}
    worst = min(fused.items(), key=lambda kv: kv[1]) if fused else None
    if headline is not None:
        print(f"headline: CosineAnnealingLR step (mmengine defaults), {g} groups, FusedSGD: "
              f"fusedopt is {headline:.1f}x faster than mmengine (target >= 50x)")
    if worst is not None:
        print(f"worst fusedopt-optimizer row: {worst[0][0]} on {worst[0][1]}: {worst[1]:.1f}x")
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"scheduler_step_{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    info = dict(provenance(device), mmengine=mmengine.__version__, options=vars(args),
                headline_ratio=headline,
                worst_fused_ratio=dict(schedule=worst[0][0], optimizer=worst[0][1],
                                       ratio=worst[1]) if worst else None,
                records=records,
                command=" ".join([os.path.basename(sys.executable)] + sys.argv))
    with open(out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
