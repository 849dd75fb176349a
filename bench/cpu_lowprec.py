"""CPU low-precision sweep (issue 27): fusedopt's cpu backend at each instruction-set level beside
torch's three implementations and an fp32 stream, interleaved in one process.

    python bench/cpu_lowprec.py --json bench/results/<cpu>/cpu-lowprec-20M-200t.json

Every case (optimizer x dtype) builds 20M params in 200 tensors (--numel/--tensors) once per
implementation, all sharing one set of grads. Before timing, each implementation runs --check-steps
steps on small copies (3 tensors of 100003 elements, past every vector width and with a tail) and
is compared with fusedopt's reference backend: a result further than --check-ulps units in the
last place of the dtype (relative to the reference's magnitude) is "wrong", shown with its error
and never used as a baseline (torch 2.13's fused CPU SGD in bf16/fp16 moves nothing,
pytorch#191763). Then each round times one step of every implementation and one stream pass
(`a.add_(b, alpha=...)` on fp32, 12 B/element), in an order rotated every round. Reported per
row: median and p20/p80 ms (wall clock, or with --clock thread the thread's CPU time), GB/s for the bytes the step must move (grad read + param and states
read and written, in the dtype), that over the stream's median GB/s ("of stream"), and the
fastest correct torch row's median over this row's ("vs torch").
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch

import fusedopt

CASES = {   # name: (class, keywords, elements moved per param: grad + 2 x read-write streams)
    "adamw": ("AdamW", dict(lr=1e-3, weight_decay=1e-2), 7),
    "adam-amsgrad": ("Adam", dict(lr=1e-3, weight_decay=1e-2, amsgrad=True), 9),
    "sgd-momentum": ("SGD", dict(lr=1e-2, momentum=0.9, weight_decay=1e-4), 5),
    "sgd-nesterov": ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4), 5),
    "sgd": ("SGD", dict(lr=1e-2, weight_decay=1e-4), 3),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_IMPLS = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
               "torch-fused": dict(fused=True)}


def make(impl, case, params):
    cls, kw, _ = CASES[case]
    if impl.startswith("fusedopt"):
        return getattr(fusedopt, "Fused" + cls)(params, **kw, backend=impl.split("-")[1]
                                                if impl.endswith("reference") else "cpu")
    return getattr(torch.optim, cls)(params, **kw, **TORCH_IMPLS[impl])


def level_of(impl):   # fusedopt-cpu-avx2 -> avx2
    return impl.rsplit("-", 1)[1] if impl.startswith("fusedopt-cpu-") else None


def step(impl, opt):
    level = level_of(impl)
    if level:
        os.environ["FUSEDOPT_CPU_CAPABILITY"] = level
    opt.step()


def tensors(numel, count, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    size = numel // count
    return [torch.randn(size, generator=g).to(dtype) for _ in range(count)]


def check(impl, case, dtype, steps, ulps):
    """Max error of `steps` steps against the reference backend, in ulps of the dtype relative to
    each element's reference magnitude (floored at the tensor's mean magnitude)."""
    init = tensors(3 * 100003, 3, dtype, 1)
    grads = [tensors(3 * 100003, 3, dtype, 10 + s) for s in range(steps)]
    results = []
    for name in ("fusedopt-reference", impl):
        params = [p.clone() for p in init]
        opt = make(name, case, params)
        for s in range(steps):
            for p, g in zip(params, grads[s]):
                p.grad = g
            step(name, opt)
        results.append(params)
    eps = torch.finfo(dtype).eps
    err = 0.0
    for ref, got in zip(*results):
        ref, got = ref.double(), got.double()
        scale = torch.maximum(ref.abs(), ref.abs().mean())
        e = ((got - ref).abs() / scale).nan_to_num(nan=float("inf")).max().item() / eps
        err = max(err, e)
    return err, err <= ulps


CLOCK = time.perf_counter   # --clock thread: time.thread_time (see main)


def stream_pass(a, b):
    t0 = CLOCK()
    a.add_(b, alpha=1e-6)
    return CLOCK() - t0


def run_case(case, dtype_name, impls, args):
    dtype = DTYPES[dtype_name]
    checks = {i: check(i, case, dtype, args.check_steps, args.check_ulps) for i in impls}
    grads = tensors(args.numel, args.tensors, dtype, 2)
    opts = {}
    for impl in impls:
        params = tensors(args.numel, args.tensors, dtype, 3)
        for p, g in zip(params, grads):
            p.grad = g
        opts[impl] = make(impl, case, params)
    a = torch.randn(args.numel)
    b = torch.randn(args.numel)
    names = list(impls) + ["stream"]
    times = {n: [] for n in names}
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            if n == "stream":
                dt = stream_pass(a, b)
            else:
                t0 = CLOCK()
                step(n, opts[n])
                dt = CLOCK() - t0
            if r >= args.warmup:
                times[n].append(dt)
    del opts, grads
    os.environ.pop("FUSEDOPT_CPU_CAPABILITY", None)
    stream_gbps = 12 * args.numel / statistics.median(times["stream"]) / 1e9
    moved = CASES[case][2] * dtype.itemsize * args.numel
    rows = []
    for n in impls:
        ts = sorted(times[n])
        med = statistics.median(ts)
        rows.append(dict(impl=n, ms=med * 1e3, p20_ms=ts[len(ts) // 5] * 1e3,
                         p80_ms=ts[(4 * len(ts)) // 5] * 1e3, gbps=moved / med / 1e9,
                         of_stream=moved / med / 1e9 / stream_gbps,
                         check_err_ulps=checks[n][0], correct=checks[n][1]))
    correct_torch = [r for r in rows if r["impl"].startswith("torch") and r["correct"]]
    best = min(correct_torch, key=lambda r: r["ms"]) if correct_torch else None
    for r in rows:
        r["vs_torch"] = best["ms"] / r["ms"] if best else None
    st = sorted(times["stream"])
    return dict(case=case, dtype=dtype_name, loadavg_end=os.getloadavg()[0],
                bytes_per_step=moved, stream_gbps=stream_gbps,
                stream_p20_p80_ms=[st[len(st) // 5] * 1e3, st[(4 * len(st)) // 5] * 1e3],
                baseline=best["impl"] if best else None, rows=rows)


def print_case(res):
    print(f"\n{res['case']} {res['dtype']}: stream {res['stream_gbps']:.1f} GB/s, "
          f"baseline {res['baseline']}, load average {res['loadavg_end']:.1f}")
    for r in res["rows"]:
        vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] else "-"
        flag = "" if r["correct"] else f"  WRONG ({r['check_err_ulps']:.3g} ulp)"
        print(f"  {r['impl']:22s} {r['ms']:8.2f} ms [{r['p20_ms']:.2f}, {r['p80_ms']:.2f}]"
              f"  {r['gbps']:6.1f} GB/s  of stream {r['of_stream']:.2f}  vs torch {vs}{flag}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=20_000_000)
    ap.add_argument("--tensors", type=int, default=200)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--levels", default="avx2,avx512", help="fusedopt cpu levels to time")
    ap.add_argument("--torch", default=",".join(TORCH_IMPLS), help="torch implementations")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--check-ulps", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: CPU time of the calling thread (needs --threads 1, where every "
                         "implementation runs on it), which leaves out the time a loaded machine "
                         "keeps the process descheduled; memory stalls still count")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread":
        if torch.get_num_threads() != 1:
            ap.error("--clock thread needs --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    impls = [f"fusedopt-cpu-{lv}" for lv in args.levels.split(",") if lv]
    impls += [t for t in args.torch.split(",") if t]
    started = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   loadavg=os.getloadavg()[0])
    results = []
    for case in args.cases.split(","):
        for dt in args.dtypes.split(","):
            res = run_case(case, dt, impls, args)
            print_case(res)
            results.append(res)
            if args.json:   # after every case: a run cut short keeps what it measured
                write(args, started, results)
    if args.json:
        print("wrote", args.json)


def write(args, started, results):
    # FUSEDOPT_BENCH_REVISION: the commit of a copied tree run outside its checkout
    rev = os.environ.get("FUSEDOPT_BENCH_REVISION") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    cpuinfo = open("/proc/cpuinfo").read().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
               platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo if ln.startswith("flags")), [])
    out = dict(device=dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(),
                           isa=sorted(f for f in flags if f.startswith(("avx", "f16c", "fma")))),
               versions=dict(torch=torch.__version__, python=platform.python_version()),
               git_revision=rev, args=vars(args), started=started,
               ended=dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          loadavg=os.getloadavg()[0]),
               results=results)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
