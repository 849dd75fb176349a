"""Low precision and AMP on a backend (issue 19), as a report: scripts/gpu_check.sh's part
``lowprec``.

1. Error table: fp16 and bf16 params stepped ``--steps`` times by fusedopt and by torch's fused
   optimizer in the same dtype, each against an fp64 for-loop run of the same grads; fusedopt's
   error must be at most 2x torch fused's (tests/tolerances.py LOW_PRECISION_FACTOR). With
   ``master_weights=True`` too where the optimizers have it.
2. GradScaler with injected inf and nan (none, one tensor, every tensor): a skipped step leaves
   params, state and step counters bitwise unchanged, and the scale follows torch's GradScaler
   driving torch's fused AdamW through the same grads.
3. ``skip_nonfinite=True`` without a scaler: the same bitwise checks, and ``skipped_steps``.
Prints a markdown report; exit 1 if a check fails.

usage: python scripts/gpu/gpu_lowprec.py --backends cuda,triton [--device cuda] [--steps 200]
"""
import argparse
import inspect
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "tests"))
from tolerances import LOW_PRECISION_FACTOR  # noqa: E402

import fusedopt  # noqa: E402

ALGOS = {"AdamW": (fusedopt.FusedAdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)),
         "SGD": (fusedopt.FusedSGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9))}


def grads_for(shapes, step):
    gen = torch.Generator().manual_seed(500 + step)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def error_row(backend, algo, dtype, device, shapes, steps, master):
    ours_cls, torch_cls, kwargs = ALGOS[algo]
    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    oracle = [torch.nn.Parameter(b.to(device)) for b in base]
    low_torch = [torch.nn.Parameter(b.to(device, dtype)) for b in base]
    low_ours = [torch.nn.Parameter(b.to(device, dtype)) for b in base]
    extra = {"master_weights": True} if master else {}
    opts = [torch_cls(oracle, foreach=False, **kwargs), torch_cls(low_torch, fused=True, **kwargs),
            ours_cls(low_ours, backend=backend, **kwargs, **extra)]
    for step in range(steps):
        for params, g64 in zip((oracle, low_torch, low_ours), [grads_for(shapes, step)] * 3):
            for p, g in zip(params, g64):
                p.grad = g.to(device, p.dtype)
        for o in opts:
            o.step()

    def err(ps):
        return max((p.double() - q).abs().max().item() for p, q in zip(ps, oracle) if p.numel())
    e_ours, e_torch = err(low_ours), err(low_torch)
    return dict(backend=backend, algo=algo, dtype=str(dtype).split(".")[-1], master=master,
                err_ours=e_ours, err_torch=e_torch, ratio=e_ours / max(e_torch, 1e-300),
                ok=e_ours <= LOW_PRECISION_FACTOR * e_torch)


def snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params])


def unchanged(before, opt, params):
    ps, states = before
    same = all(torch.equal(p, q) for p, q in zip(params, ps))
    for p, s in zip(params, states):
        same &= all(torch.equal(opt.state[p][k], v) for k, v in s.items())
    return same


def scaler_rows(backend, device, shapes):
    """Injected inf/nan under a GradScaler: fusedopt vs torch fused AdamW, same scaled grads."""
    rows = []
    for case in ("none", "inf in one tensor", "nan in every tensor"):
        gen = torch.Generator().manual_seed(3)
        base = [torch.randn(s, generator=gen) for s in shapes]
        ours = [torch.nn.Parameter(b.to(device)) for b in base]
        theirs = [torch.nn.Parameter(b.to(device)) for b in base]
        opt = fusedopt.FusedAdamW(ours, backend=backend)
        ref = torch.optim.AdamW(theirs, fused=True)
        scalers = [torch.amp.GradScaler(device.type, init_scale=2.0 ** 10, growth_interval=2)
                   for _ in range(2)]
        ok = True
        for step in range(6):
            poison = case != "none" and step == 3
            before = snapshot(opt, ours) if poison else None
            for params, scaler in ((ours, scalers[0]), (theirs, scalers[1])):
                scaler.scale(torch.ones((), device=device))
                for i, (p, g) in enumerate(zip(params, grads_for(shapes, step))):
                    p.grad = (g.float() * scaler.get_scale()).to(device)
                    if poison and (i == 0 or case.startswith("nan")) and p.numel():
                        p.grad.view(-1)[0] = float("inf") if "inf" in case else float("nan")
            for o, scaler in ((opt, scalers[0]), (ref, scalers[1])):
                scaler.step(o)
                scaler.update()
            if poison:
                ok &= unchanged(before, opt, ours)
            ok &= scalers[0].get_scale() == scalers[1].get_scale()
        ok &= all(torch.allclose(p, q, rtol=2e-5, atol=2e-6) for p, q in zip(ours, theirs))
        rows.append(dict(backend=backend, check=f"GradScaler, {case}", ok=bool(ok),
                         scale=scalers[0].get_scale()))
    return rows


def skip_nonfinite_rows(backend, device, shapes):
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in shapes]
    opt = fusedopt.FusedAdamW(params, backend=backend, skip_nonfinite=True)
    ok = True
    for step in range(4):
        poison = step in (1, 2)
        before = snapshot(opt, params) if poison and step > 0 else None
        for p, g in zip(params, grads_for(shapes, step)):
            p.grad = g.float().to(device)
        if poison:
            params[-1].grad.view(-1)[0] = float("nan") if step == 1 else float("inf")
        opt.step()
        if before is not None:
            ok &= unchanged(before, opt, params)
    ok &= int(opt.skipped_steps.item()) == 2
    ok &= all(int(opt.state[p]["step"].item()) == 2 for p in params)
    return [dict(backend=backend, check="skip_nonfinite, nan then inf", ok=bool(ok))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--small", action="store_true", help="tiny shapes (the CPU dry run)")
    args = ap.parse_args()
    device = torch.device(args.device)
    shapes = ([(5,), (3, 7), (0,), (33,)] if args.small
              else [(257,), (31, 9), (0,), (1000,), (70_000,)])
    has_master = "master_weights" in inspect.signature(fusedopt.FusedAdamW).parameters
    errors, checks = [], []
    for backend in args.backends.split(","):
        for algo in ALGOS:
            for dtype in (torch.float16, torch.bfloat16):
                for master in (False, True) if has_master else (False,):
                    errors.append(error_row(backend, algo, dtype, device, shapes, args.steps,
                                            master))
        checks += scaler_rows(backend, device, shapes) + skip_nonfinite_rows(backend, device,
                                                                           shapes)
    print(f"## Error against an fp64 run after {args.steps} steps ({device}; torch "
          f"{torch.__version__})\n")
    print("| backend | algorithm | dtype | master weights | fusedopt | torch fused | ratio | "
          f"<= {LOW_PRECISION_FACTOR:g}x |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in errors:
        print(f"| {r['backend']} | {r['algo']} | {r['dtype']} | {r['master']} | "
              f"{r['err_ours']:.3g} | {r['err_torch']:.3g} | {r['ratio']:.2f} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    if not has_master:
        print("\nmaster_weights: not in this fusedopt (the rows above are without)")
    print("\n## Non-finite grads\n\n| backend | check | result |\n| --- | --- | --- |")
    for c in checks:
        print(f"| {c['backend']} | {c['check']} | {'pass' if c['ok'] else 'FAIL'} |")
    sys.exit(0 if all(r["ok"] for r in errors + checks) else 1)


if __name__ == "__main__":
    main()
