"""End to end: a video model trained with the seed's recipe, fusedopt against torch.optim, through
mmengine's Runner and fusedopt's own config layer, eager, as one CUDA graph and compiled.

``fusedopt-bench e2e`` (or ``python bench/train_e2e.py``). One process, same seeds, same data: each
row trains the same initial model (fusedopt/bench/e2e_data.py) with the recipe of
fusedopt/bench/e2e_recipe.py. A row is ``route:impl``:

- ``runner:torch-foreach``, ``runner:torch-fused``: torch.optim behind mmengine's OptimWrapper /
  AmpOptimWrapper in a real ``Runner`` (fusedopt/bench/e2e_runner.py);
- ``runner:fusedopt-<backend>``: ``type='fusedopt.FusedSGD'`` (or FusedAdamW) behind fusedopt's
  wrappers, in the same Runner;
- ``standalone:fusedopt-<backend>``: fusedopt's standalone config layer, a plain loop;
- ``graph:fusedopt-cuda``: the whole iteration in one CUDA graph (fusedopt/bench/e2e_loop.py);
- ``compile:fusedopt-<backend>``, ``compile:torch-fused``: the step under
  ``torch.compile(mode='reduce-overhead')``.

Recorded per row: the loss of every iteration; the optimizer's time (clip + step + scheduler: CUDA
events on a GPU, wall time on CPU), the iteration time and peak memory; the host syncs of one
iteration, in the optimizer's part and in all (fusedopt/bench/e2e_syncs.py); for the rows named by
``--resume-check``, a new Runner resumed from the checkpoint of an epoch end, whose losses must
equal the uninterrupted run's (bitwise in fp32).

**The yardstick** for the loss curves is torch against itself: the reference row (runner:torch-fused,
else runner:torch-foreach) is run again ``--spread-seeds`` times with every param nudged by one ulp
after the first step. At each iteration the band is the range of those runs' losses and the
reference's; a row is within the spread when its largest distance from the reference, over the
run, is at most the band's largest width. (Training amplifies any rounding difference, so a fixed
tolerance is a guess: issue 29.) The graph row is also held to the eager standalone row it
replays, which it should equal.

``--tiny`` is the CPU mode CI runs (a narrow model, 4-frame 32x32 clips, a few iterations);
``--dry`` runs the GPU-only routes on the CPU in their stand-in forms (the graph's iteration
function eagerly in place of each replay, Dynamo's eager backend in place of reduce-overhead).
``--out DIR`` writes ``e2e-<optimizer>-<precision>.json`` (or ``--name``), ``-loss.png`` and
``-time.png``.
"""
import argparse
import copy
import json
import math
import os
import platform
import shutil
import tempfile

import torch

from fusedopt.bench import report
from fusedopt.bench.e2e_data import Clips, build_model, timings

PRECISIONS = ("fp32", "fp16", "bf16")
ROUTES = ("runner", "standalone", "graph", "compile")


# ---- which rows run here --------------------------------------------------------------------

def default_rows(device, dry):
    if device.type == "cuda":
        return ["runner:torch-foreach", "runner:torch-fused", "runner:fusedopt-cuda",
                "runner:fusedopt-triton", "standalone:fusedopt-cuda", "graph:fusedopt-cuda",
                "compile:fusedopt-cuda", "compile:torch-fused"]
    rows = ["runner:torch-foreach", "runner:torch-fused", "runner:fusedopt-cpu",
            "standalone:fusedopt-cpu"]
    return rows + (["graph:fusedopt-cpu", "compile:fusedopt-cpu"] if dry else [])


def _has_mmengine_runner():
    try:
        import mmengine.runner  # noqa: F401  (imports cv2: see scripts/gpu/wheelhouse.sh)
        return None
    except ImportError as exc:
        return f"mmengine's Runner does not import here ({exc})"


def unavailable(row, args, device):
    """None if ``row`` can run here, else why not."""
    route, impl = row.split(":", 1)
    if route == "runner":
        reason = _has_mmengine_runner()
        if reason:
            return reason
        if args.precision != "fp32" and device.type != "cuda" and impl.startswith("torch-"):
            return "mmengine's AmpOptimWrapper needs a GPU"
    if route == "graph":
        if device.type != "cuda" and not args.dry:
            return "CUDA graphs need a GPU (--dry runs the iteration function eagerly)"
        if args.precision == "fp16":
            return "GradScaler's scale update is not capturable; graph mode runs fp32 or bf16"
    if route == "compile":
        if device.type != "cuda" and not args.dry:
            return "mode='reduce-overhead' is CUDA graphs (--dry compiles with the eager backend)"
        if args.precision == "fp16":
            return "the compiled step has no GradScaler; it runs fp32 or bf16"
    if impl.startswith("fusedopt-"):
        from fusedopt import backends
        name = impl.split("-", 1)[1]
        reason = backends.unavailable_reason(name)
        if reason is None and not backends._module(name).supports(device):
            reason = f"backend {name!r} does not step tensors on {device}"
        return reason
    if impl == "torch-fused" and device.type == "cpu" and args.precision == "fp16":
        return "torch's fused optimizers take no fp16 GradScaler on CPU"
    return None


# ---- one row ----------------------------------------------------------------------------------

def _fresh_model(init_state, args, device):
    model, _ = build_model(args)
    model.load_state_dict(init_state)
    return model.to(device).train()


def run_row(row, init_state, clips, args, device, *, nudge_seed=None, work_dir=None,
            keep_checkpoints=1):
    route, impl = row.split(":", 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sync_iter = args.iters - 1
    runner = None
    if route == "runner":
        from fusedopt.bench import e2e_runner
        rec, runner = e2e_runner.train(impl, init_state, clips, args, work_dir,
                                       sync_iter=sync_iter, nudge_seed=nudge_seed,
                                       keep_checkpoints=keep_checkpoints)
        losses, syncs, wrapper = rec.losses, rec.syncs, runner.optim_wrapper
        if device.type == "cuda":
            torch.cuda.synchronize()
        timing = timings(rec.marks, rec.clock, args.warmup_iters)
    else:
        from fusedopt.bench import e2e_loop
        model = _fresh_model(init_state, args, device)
        if route == "standalone":
            out = e2e_loop.standalone(impl, model, clips, args, device, sync_iter=sync_iter,
                                      nudge_seed=nudge_seed)
        else:
            fn = e2e_loop.graph if route == "graph" else e2e_loop.compiled
            out = fn(impl, model, clips, args, device, dry=device.type != "cuda")
        losses, marks, clock, wrapper, syncs = out
        if device.type == "cuda":
            torch.cuda.synchronize()
        timing = timings(marks, clock, args.warmup_iters)
    return dict(row=row, status="ok", losses=[float(v) for v in torch.stack(losses).cpu()],
                **timing, syncs=syncs,
                peak_mem_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                final_lr=[round(g["lr"], 10) for g in wrapper.param_groups][:3]), runner


def resume_check(row, ref, init_state, clips, args, work_dir):
    """A new Runner resumed from the checkpoint at the end of epoch ``args.resume_epoch`` of
    ``ref`` (the row's own run, checkpoints kept in ``work_dir``): its losses after that point
    against the uninterrupted run's."""
    from fusedopt.bench import e2e_runner
    ckpt = os.path.join(work_dir, f"epoch_{args.resume_epoch}.pth")
    k = args.resume_epoch * args.epoch_length
    # mmengine 0.10.7 calls torch.load without weights_only, and its checkpoint holds the
    # MessageHub's HistoryBuffer (numpy arrays), which torch >= 2.6's weights-only default
    # refuses; the file was written by this process a moment ago
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        rec, _ = e2e_runner.train(row.split(":", 1)[1], init_state, clips, args,
                                  work_dir + "-resumed", resume_from=ckpt)
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old
    got = [float(v) for v in torch.stack(rec.losses).cpu()] if rec.losses else []
    want = ref["losses"][k:]
    n = min(len(got), len(want))
    diff = max((abs(a - b) for a, b in zip(got, want)), default=float("inf"))
    return dict(from_iter=k, iters=len(got), expected_iters=len(want),
                bitwise=len(got) == len(want) and got == want, max_abs_diff=diff if n else None,
                bitwise_expected=args.precision == "fp32", losses=got)


# ---- judging the curves ---------------------------------------------------------------------

def spread_band(ref, spread_runs):
    """Per iteration: (low, high) of the losses of the reference and its nudged runs."""
    runs = [ref["losses"]] + [r["losses"] for r in spread_runs]
    n = min(len(r) for r in runs)
    return [min(r[i] for r in runs) for i in range(n)], [max(r[i] for r in runs) for i in range(n)]


def agreement(results, band, ref_name):
    ok = {r["row"]: r for r in results if r["status"] == "ok"}
    ref = ok.get(ref_name)
    for r in ok.values():
        if ref is None or r is ref:
            continue
        a, b = r["losses"], ref["losses"]
        n = min(len(a), len(b))
        dev = [abs(a[i] - b[i]) for i in range(n)]
        rec = dict(vs=ref_name, max_dev=max(dev, default=0.0),
                   final_rel_diff=abs(a[n - 1] - b[n - 1]) / max(abs(b[n - 1]), 1e-12))
        if band is not None:
            width = [hi - lo for lo, hi in zip(*band)][:n]
            rec.update(max_band=max(width, default=0.0),
                       inside_fraction=sum(d <= w for d, w in zip(dev, width)) / max(len(width), 1))
            rec["within_spread"] = rec["max_dev"] <= rec["max_band"]
        r["agreement"] = rec
        if r.get("optim_ms") and ref.get("optim_ms"):
            r["optim_speedup_vs_ref"] = ref["optim_ms"] / r["optim_ms"]
        if r.get("iter_ms") and ref.get("iter_ms"):
            r["iter_speedup_vs_ref"] = ref["iter_ms"] / r["iter_ms"]
    for r in ok.values():         # a graph row replays the standalone row's iteration
        if r["row"].startswith("graph:"):
            eager = ok.get("standalone:" + r["row"].split(":", 1)[1])
            if eager:
                d = max(abs(x - y) for x, y in zip(r["losses"], eager["losses"]))
                r["vs_eager"] = dict(vs=eager["row"], max_abs_diff=d,
                                     bitwise=r["losses"] == eager["losses"],
                                     iter_speedup=(eager["iter_ms"] / r["iter_ms"]
                                                   if r.get("iter_ms") else None))


# ---- the run ----------------------------------------------------------------------------------

def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda}
    for name in ("fusedopt", "mmengine", "torchvision", "triton"):
        try:
            out[name] = __import__(name).__version__
        except Exception:       # not installed, or broken: recorded as absent
            out[name] = None
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(prog="fusedopt-bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--rows", default=None,
                   help="comma list of route:impl (default: every one that runs here)")
    p.add_argument("--iters", type=int, default=None, help="iterations (default 60; --tiny 6)")
    p.add_argument("--epoch-length", type=int, default=None, help="iterations per epoch")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="LinearLR warm-up iterations")
    p.add_argument("--warmup-iters", type=int, default=None, help="untimed first iterations")
    p.add_argument("--log-interval", type=int, default=10, help="the Runner's LoggerHook")
    p.add_argument("--spread-seeds", type=int, default=None,
                   help="nudged runs of the reference row (default 3; --tiny 2)")
    p.add_argument("--resume-check", default=None,
                   help="comma list of runner rows to resume (default: the first runner:fusedopt "
                        "row; 'none' for none)")
    p.add_argument("--resume-epoch", type=int, default=1, help="the checkpoint resumed from")
    p.add_argument("--tiny", action="store_true", help="the CPU mode CI runs")
    p.add_argument("--dry", action="store_true", help="GPU-only routes in their CPU forms")
    p.add_argument("--work-dir", default=None, help="Runner work dirs (default: a temp dir)")
    p.add_argument("--out", default=None, help="folder for the JSON and the two PNGs")
    p.add_argument("--name", default=None,
                   help="their file stem in --out (default e2e-<optimizer>-<precision>)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG of the loss curves (+ -time.png beside it)")
    args = p.parse_args(argv)
    tiny = dict(iters=6, epoch_length=3, batch=2, frames=4, size=32, classes=4, warmup=2,
                warmup_iters=1, spread_seeds=2)
    full = dict(iters=60, epoch_length=20, batch=8, frames=16, size=112, classes=400, warmup=10,
                warmup_iters=5, spread_seeds=3)
    for k, v in (tiny if args.tiny else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.epochs = math.ceil(args.iters / args.epoch_length)
    if args.iters != args.epochs * args.epoch_length:
        p.error(f"--iters {args.iters} must be whole epochs of --epoch-length {args.epoch_length}")
    if args.resume_check != "none" and not 0 < args.resume_epoch < args.epochs:
        p.error(f"--resume-epoch {args.resume_epoch} must be an epoch end before the last of "
                f"{args.epochs} epochs (or --resume-check none)")
    for row in (args.rows.split(",") if args.rows else []):
        route, _, impl = row.partition(":")
        if route not in ROUTES or not impl:
            p.error(f"--rows: {row!r} is not route:impl with a route of {', '.join(ROUTES)}")
    return args


def main(argv=None):
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":     # the same convolution algorithms in every row and on resume
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    rows = args.rows.split(",") if args.rows else default_rows(device, args.dry)
    torch.manual_seed(0)
    model, model_name = build_model(args)
    init_state = copy.deepcopy(model.state_dict())
    clips = Clips(args, device)
    work = args.work_dir or tempfile.mkdtemp(prefix="fusedopt-e2e-")
    resume = ([] if args.resume_check == "none" else args.resume_check.split(",")
              if args.resume_check else [r for r in rows if r.startswith("runner:fusedopt-")][:1])
    results = []
    for row in rows:
        reason = unavailable(row, args, device)
        if reason is not None:
            results.append(dict(row=row, status="skipped", reason=reason))
            print(f"{row:28s} skipped: {reason}", flush=True)
            continue
        wd = os.path.join(work, row.replace(":", "-"))
        r, _ = run_row(row, init_state, clips, args, device, work_dir=wd,
                       keep_checkpoints=-1 if row in resume else 1)
        if row in resume:
            r["resume"] = resume_check(row, r, init_state, clips, args, wd)
        results.append(r)
        shutil.rmtree(wd, ignore_errors=True)
        shutil.rmtree(wd + "-resumed", ignore_errors=True)
        opt = f", optimizer {r['optim_ms']:.3f} ms" if r.get("optim_ms") else ""
        print(f"{row:28s} loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, iteration "
              f"{r['iter_ms']:.2f} ms{opt}", flush=True)
    ok = {r["row"]: r for r in results if r["status"] == "ok"}
    ref_name = next((n for n in ("runner:torch-fused", "runner:torch-foreach") if n in ok), None)
    spread = None
    if ref_name and args.spread_seeds > 0:
        runs = []
        for seed in range(1, args.spread_seeds + 1):
            wd = os.path.join(work, f"spread-{seed}")
            r, _ = run_row(ref_name, init_state, clips, args, device, nudge_seed=seed,
                           work_dir=wd)
            shutil.rmtree(wd, ignore_errors=True)
            runs.append(dict(seed=seed, losses=r["losses"]))
        low, high = spread_band(ok[ref_name], runs)
        spread = dict(vs=ref_name, nudge="1 ulp of every param element, up or down at random, "
                      "after the first step", runs=runs, low=low, high=high)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    agreement(results, (spread["low"], spread["high"]) if spread else None, ref_name)
    doc = dict(kind="e2e", device=report.device_slug(device),
               device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                            else report.cpu_name()),
               versions=versions(), git=report.git_info(), model=model_name,
               options=vars(args), reference=ref_name, spread=spread, results=results)
    summarize(doc)
    write(doc, args)
    return doc


def summarize(doc):
    for r in doc["results"]:
        if r["status"] != "ok":
            continue
        parts = []
        a = r.get("agreement")
        if a:
            band = (f" (band {a['max_band']:.2e}: {'within' if a['within_spread'] else 'OUTSIDE'})"
                    if "max_band" in a else "")
            parts.append(f"vs {a['vs']} max |dloss| {a['max_dev']:.2e}{band}")
        if r.get("optim_speedup_vs_ref"):
            parts.append(f"optimizer {r['optim_speedup_vs_ref']:.2f}x")
        if r.get("syncs"):
            parts.append(f"syncs: optimizer {r['syncs']['ops'].get('optimizer', 0)}, "
                         f"iteration {sum(r['syncs']['ops'].values())}")
        if r.get("resume"):
            rs = r["resume"]
            parts.append(f"resume at {rs['from_iter']}: "
                         f"{'bitwise' if rs['bitwise'] else 'max diff %.2e' % rs['max_abs_diff']}")
        if r.get("vs_eager"):
            parts.append(f"vs eager: {'bitwise' if r['vs_eager']['bitwise'] else 'max diff %.2e' % r['vs_eager']['max_abs_diff']}")
        print(f"{r['row']:28s} " + "; ".join(parts))


def write(doc, args):
    stem = args.name or f"e2e-{args.optimizer}-{args.precision}"
    json_path, plot_path = args.json, args.plot
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        json_path = json_path or os.path.join(args.out, stem + ".json")
        plot_path = plot_path or os.path.join(args.out, stem + "-loss.png")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        from fusedopt.bench import e2e_plot
        time_path = plot_path.replace("-loss.png", "").replace(".png", "") + "-time.png"
        if e2e_plot.plot(doc, plot_path, time_path):
            print(f"wrote {plot_path} and {time_path}")


if __name__ == "__main__":
    main()
