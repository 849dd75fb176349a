"""The two-stage algorithms' step time over AdamW's (issue 26: FusedLAMB at 20M params on cpu within
1.3x of FusedAdamW), one process, interleaved.

    python bench/two_stage.py                       # 20M params in 200 tensors, lamb and lars
    python bench/two_stage.py --tensors 20 --repeats 5 --json r.json
    python bench/two_stage.py --preset vit-b16      # a real model's shapes (fusedopt/bench/presets.py)

Each optimizer steps its own params (the same values: `make_params` of fusedopt/bench/measure.py)
with the bench's hyper-parameters (`hyper` in fusedopt/bench/impls.py: LAMB at its class's defaults,
weight decay 0.01 and its global grad-norm clip to 1.0; AdamW with weight decay 1e-2). A round
times one step of each, in an order rotated every round (Note [interleaved timing]); a repeat is
--rounds rounds after --warmup. Per repeat and algorithm: the median step time and its ratio to
AdamW's median of the same repeat. The summary gives each ratio's median and its spread (min,
max) over the repeats: a shared 2-core machine moves single timings by 10% and more.
"""
import argparse
import json
import os
import statistics
import time

import torch

from fusedopt.bench import impls, measure, presets, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=20_000_000)
    ap.add_argument("--tensors", type=int, default=200)
    ap.add_argument("--preset", choices=list(presets.PRESETS), default=None,
                    help="a model's param shapes instead of --numel in --tensors")
    ap.add_argument("--optimizers", default="lamb,lars", help="timed beside adamw")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    names = ["adamw"] + [n for n in args.optimizers.split(",") if n]
    shapes = (presets.shapes(args.preset) if args.preset
              else measure.synthetic_shapes(args.numel, args.tensors))
    steps = {}
    for name in names:
        params = measure.make_params(shapes, torch.float32, torch.device("cpu"))
        opt = impls.build(f"fusedopt-{args.backend}", name, [{"params": params}],
                          torch.device("cpu"))
        steps[name] = opt.step
    timer = measure.Timer(torch.device("cpu"))
    repeats = []
    for _ in range(args.repeats):
        times = {n: [] for n in names}
        for r in range(args.warmup + args.rounds):
            for k in range(len(names)):
                name = names[(k + r) % len(names)]
                ms = timer(steps[name])
                if r >= args.warmup:
                    times[name].append(ms)
        med = {n: statistics.median(t) for n, t in times.items()}
        repeats.append(dict(ms=med, ratio={n: med[n] / med["adamw"] for n in names[1:]},
                            p20_p80_ms={n: [measure.quantile(t, 0.2), measure.quantile(t, 0.8)]
                                        for n, t in times.items()},
                            loadavg=os.getloadavg()[0]))
        print("  ".join(f"{n} {med[n]:.2f} ms" for n in names) + "  ratio "
              + "  ".join(f"{n}/adamw {repeats[-1]['ratio'][n]:.3f}" for n in names[1:])
              + f"  load {repeats[-1]['loadavg']:.1f}", flush=True)
    summary = {n: dict(median=statistics.median(r["ratio"][n] for r in repeats),
                       min=min(r["ratio"][n] for r in repeats),
                       max=max(r["ratio"][n] for r in repeats)) for n in names[1:]}
    for n, s in summary.items():
        print(f"{n}/adamw: median {s['median']:.3f} over {args.repeats} repeats "
              f"[{s['min']:.3f}, {s['max']:.3f}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           args=vars(args), **report.provenance("cpu"), repeats=repeats,
                           summary=summary), f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
