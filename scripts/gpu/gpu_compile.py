"""A whole training step under torch.compile on a GPU (issue 18, item 4; gpu_check.sh, part compile).

The step: forward, backward, clip_grad_norm_(1.0), AdamW step, zero_grad, on an MLP of
``--layers`` Linear layers of ``--width`` (one group, or one group per parameter with
``--per-param``). Each implementation runs eagerly and compiled with ``--modes`` from the same
initial weights and data:
- ``torch-foreach``: torch.optim.AdamW(foreach=True) and torch.nn.utils.clip_grad_norm_;
- ``fusedopt``: fusedopt.FusedAdamW(backend=--backend) and its clip_grad_norm_.
Per run: the median time of one iteration after warm-up (CUDA events; wall time on CPU), the
first call's compile time, inductor's reasons for skipping CUDA graphs (none means the optimizer
is inside the graph), and the largest relative difference of the params from the eager run of
the same implementation after --iters iterations. torch's own compiled-vs-eager difference is the
yardstick for that last figure: inductor reorders the forward's arithmetic.
Prints a markdown table; --json writes the records, each with device, versions and git revision.

usage: python scripts/gpu/gpu_compile.py [--device cuda] [--backend cuda] [--modes reduce-overhead]
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import fusedopt  # noqa: E402


class SkipReasons(logging.Handler):
    """inductor says why it skips a CUDA graph only in its "cudagraphs" log."""

    def __init__(self):
        super().__init__()
        self.reasons = []
        from torch._inductor import cudagraph_utils
        cudagraph_utils.cudagraphs_log.addHandler(self)
        torch._logging.set_logs(cudagraphs=True)

    def emit(self, record):
        message = record.getMessage()
        if "skipping cudagraphs" in message and message not in self.reasons:
            self.reasons.append(message)


def build(impl, args, device, init):
    torch.manual_seed(0)
    layers = []
    for _ in range(args.layers):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    if init is not None:
        model.load_state_dict(init)
    params = list(model.parameters())
    groups = ([{"params": [p], "lr": 1e-3 * (1 + i % 3)} for i, p in enumerate(params)]
              if args.per_param else [{"params": params}])
    if impl == "torch-foreach":
        opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01, foreach=True)
        clip = lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)   # noqa: E731
    else:
        opt = fusedopt.FusedAdamW(groups, lr=1e-3, weight_decay=0.01, backend=args.backend)
        clip = lambda: opt.clip_grad_norm_(1.0)                                     # noqa: E731
    return model, opt, clip


def run(impl, mode, args, device, init, data, skips):
    model, opt, clip = build(impl, args, device, init)
    x, y = data

    def step():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        clip()
        opt.step()
        opt.zero_grad()
        return loss

    fn = step if mode == "eager" else torch.compile(step, mode=None if mode == "default" else mode)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    skips.reasons.clear()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mark = (torch.compiler.cudagraph_mark_step_begin if mode == "reduce-overhead"
            else (lambda: None))
    t0 = time.perf_counter()
    mark()
    fn()
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(args.iters - 1):   # the checked run: --iters iterations in all
        mark()
        fn()
    sync()
    final = [p.detach().clone() for p in model.parameters()]
    times = []
    for _ in range(args.timed):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t = time.perf_counter()
        mark()
        fn()
        if cuda:
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            times.append((time.perf_counter() - t) * 1e3)
    return final, dict(impl=impl, mode=mode, ms=sorted(times)[len(times) // 2],
                       first_call_s=round(first_s, 2),
                       cudagraph_skips=list(skips.reasons) if mode == "reduce-overhead" else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="cuda", help="fusedopt's backend")
    ap.add_argument("--modes", default="reduce-overhead",
                    help="comma-separated torch.compile modes besides eager (default, "
                         "reduce-overhead, max-autotune-no-cudagraphs)")
    ap.add_argument("--impls", default="torch-foreach,fusedopt")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--per-param", action="store_true", help="one group per parameter")
    ap.add_argument("--iters", type=int, default=10, help="iterations before the comparison")
    ap.add_argument("--timed", type=int, default=50)
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(1)
    data = (torch.randn(args.batch, args.width, device=device),
            torch.randn(args.batch, args.width, device=device))
    init = build("torch-foreach", args, device, None)[0].state_dict()
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    env = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               torch=torch.__version__, git=os.environ.get("FUSEDOPT_GIT_COMMIT", revision),
               width=args.width, layers=args.layers, batch=args.batch, per_param=args.per_param)
    records, skips = [], SkipReasons()
    for impl in args.impls.split(","):
        eager, rec = run(impl, "eager", args, device, init, data, skips)
        records.append(dict(env, **rec, max_rel_diff_vs_eager=0.0))
        for mode in args.modes.split(","):
            try:
                final, rec = run(impl, mode, args, device, init, data, skips)
            except Exception as exc:   # reported, and the other runs still go
                records.append(dict(env, impl=impl, mode=mode, error=f"{type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"))
                continue
            diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                       for a, b in zip(final, eager))
            records.append(dict(env, **rec, max_rel_diff_vs_eager=diff))
    base = {r["impl"]: r["ms"] for r in records if r["mode"] == "eager"}
    print(f"| impl | mode | ms/iter | vs its eager | first call s | cudagraph skips | "
          f"max rel. param diff vs eager after {args.iters} it. |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        if "error" in r:
            print(f"| {r['impl']} | {r['mode']} | FAILED: {r['error']} | | | | |")
            continue
        print(f"| {r['impl']} | {r['mode']} | {r['ms']:.3f} | {base[r['impl']] / r['ms']:.2f}x | "
              f"{r['first_call_s']} | {'; '.join(r['cudagraph_skips'] or []) or '-'} | "
              f"{r['max_rel_diff_vs_eager']:.2e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    sys.exit(1 if any("error" in r for r in records) else 0)


if __name__ == "__main__":
    main()
