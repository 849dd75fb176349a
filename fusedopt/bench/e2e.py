"""End to end: a video model trained with the seed's optimizer config, fusedopt against torch.optim.

``fusedopt-bench e2e`` (or ``python bench/train_e2e.py``). One process, same seeds, same data:
each implementation trains the same initial model (torchvision's ``r3d_18`` where torchvision is
importable, else this module's ``VideoResNet`` of the same layout) on synthetic clips made on the
device, with MMAction2's recipe as an mmengine config (SGD momentum 0.9, weight_decay 1e-4, or
AdamW; ``paramwise_cfg`` norm_decay_mult=0, bias_decay_mult=0, the stem at lr_mult=0.1;
``clip_grad`` max_norm 40; a LinearLR warm-up by iteration then MultiStepLR by epoch, converted to
iterations; fp32, fp16 with loss scaling, or bf16). Implementations:

- ``torch-foreach`` / ``torch-fused``: torch.optim behind fusedopt's config layer;
- ``fusedopt-cuda`` / ``fusedopt-triton`` / ``fusedopt-cpu``: fusedopt's backends, same layer;
- ``fusedopt-mmengine``: mmengine's own OptimWrapper and schedulers with fusedopt's optimizer,
  through ``fusedopt.mmengine`` (where mmengine is installed);
- ``fusedopt-cuda-graph``: the whole iteration (forward, backward, clip, step, schedule) captured
  once in a CUDA graph with fusedopt's DeviceSchedule and replayed (CUDA; fp32 or bf16).

Recorded per implementation: the loss of every iteration, the optimizer's time per iteration
(clip + step + scheduler, CUDA events on a GPU), the iteration time and peak memory; JSON, and a
PNG of the loss curves and the time breakdown. Loss agreement is judged against torch-fused (or
torch-foreach where fused is not run): fp32 runs over the first ``--agree-iters`` iterations
(nearly equal: only rounding differs, which training amplifies slowly), AMP runs on the mean loss
of the last quarter (statistically equal: fp16/bf16 rounding of the forward differs at once).
``--tiny`` is the CPU mode CI runs: a narrow model, 8-frame 32x32 clips, a few iterations.
"""
import argparse
import copy
import json
import math
import time

import torch
from torch import nn

from fusedopt.bench.report import provenance

PRECISIONS = ("fp32", "fp16", "bf16")


# ---- model and data ---------------------------------------------------------------------------

class _Block(nn.Module):
    """Basic 3-D residual block: two 3x3x3 convolutions (r3d_18's layout)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm3d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class VideoResNet(nn.Module):
    """r3d_18's layout (stem, four stages of two blocks, pooling, fc) with chosen widths."""

    def __init__(self, widths=(64, 128, 256, 512), num_classes=400):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_Block(cin, w, stride), _Block(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def build_model(args):
    if not args.tiny:
        try:
            from torchvision.models.video import r3d_18
            return r3d_18(num_classes=args.classes), "torchvision r3d_18"
        except ImportError:
            pass
    widths = (8, 16, 16, 32) if args.tiny else (64, 128, 256, 512)
    return VideoResNet(widths, args.classes), f"VideoResNet{widths} (r3d_18 layout)"


class Clips:
    """Synthetic clips on the device: class prototypes plus noise, so the loss can fall. Batch
    ``i`` is the same for every implementation (its own generator seed)."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        gen = torch.Generator(device=device).manual_seed(1234)
        self.shape = (3, args.frames, args.size, args.size)
        self.prototypes = torch.randn(args.classes, *self.shape, generator=gen, device=device)

    def batch(self, i):
        gen = torch.Generator(device=self.device).manual_seed(10_000 + i)
        y = torch.randint(0, self.args.classes, (self.args.batch,), generator=gen,
                          device=self.device)
        noise = torch.randn(self.args.batch, *self.shape, generator=gen, device=self.device)
        return self.prototypes[y] + 2.0 * noise, y


# ---- the seed's config ---------------------------------------------------------------------

def optim_wrapper_cfg(impl, args):
    algo = {"sgd": ("SGD", dict(lr=0.01 * args.batch / 8, momentum=0.9, weight_decay=1e-4)),
            "adamw": ("AdamW", dict(lr=1e-3, weight_decay=0.05))}
    name, kwargs = algo[args.optimizer]
    if impl == "torch-foreach":
        optimizer = dict(type=name, foreach=True, **kwargs)
    elif impl == "torch-fused":
        optimizer = dict(type=name, fused=True, **kwargs)
    else:
        backend = impl.split("-")[1] if impl != "fusedopt-mmengine" else "auto"
        optimizer = dict(type=("fusedopt." if impl == "fusedopt-mmengine" else "") + "Fused" + name,
                         backend=backend, **kwargs)
    cfg = dict(type="OptimWrapper", optimizer=optimizer,
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                  custom_keys={"stem": dict(lr_mult=0.1)}),
               clip_grad=dict(max_norm=40, norm_type=2))
    if args.precision == "fp16":
        cfg.update(type="AmpOptimWrapper", loss_scale="dynamic", dtype="float16")
    elif args.precision == "bf16":
        cfg.update(type="AmpOptimWrapper", dtype="bfloat16")
    return cfg


def param_scheduler_cfg(args):
    return [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=args.warmup),
            dict(type="MultiStepLR", by_epoch=True, milestones=[args.epochs // 2 + 1],
                 gamma=0.1, begin=0, end=args.epochs, convert_to_iter_based=True)]


def build(impl, model, args):
    """(optim wrapper, schedulers) for ``impl`` on ``model``."""
    if impl == "fusedopt-mmengine":
        import fusedopt.mmengine  # noqa: F401  registers fusedopt's classes in mmengine's registries
        from mmengine.logging import MMLogger
        from mmengine.optim import build_optim_wrapper
        # the 'current' logger: quiet the constructor's line per parameter
        MMLogger.get_instance("fusedopt-e2e", log_level="WARNING")
        from mmengine.registry import PARAM_SCHEDULERS
        wrapper = build_optim_wrapper(model, optim_wrapper_cfg(impl, args))
        scheds = []
        for cfg in param_scheduler_cfg(args):
            cfg = dict(cfg)
            convert = cfg.pop("convert_to_iter_based", False)
            cls = PARAM_SCHEDULERS.get(cfg.pop("type"))
            scheds.append(cls.build_iter_from_epoch(wrapper, epoch_length=args.epoch_length,
                                                    **cfg) if convert else cls(wrapper, **cfg))
        return wrapper, scheds
    import fusedopt
    wrapper = fusedopt.build_optim_wrapper(model, optim_wrapper_cfg(impl, args))
    return wrapper, fusedopt.build_param_scheduler(wrapper, param_scheduler_cfg(args),
                                                   epoch_length=args.epoch_length)


def unavailable(impl, args, device):
    """None if ``impl`` can run here, else why not."""
    if impl == "fusedopt-mmengine":
        try:
            import mmengine  # noqa: F401
        except ImportError:
            return "mmengine is not installed"
        if args.precision != "fp32" and device.type != "cuda":
            return "mmengine's AmpOptimWrapper needs a GPU"
    if impl == "fusedopt-cuda-graph":
        if device.type != "cuda":
            return "CUDA graphs need a GPU"
        if args.precision == "fp16":
            return "GradScaler's scale update is not capturable; graph mode runs fp32 or bf16"
    if impl.startswith("fusedopt-") and impl.split("-")[1] in ("cuda", "triton", "cpu"):
        from fusedopt import backends
        name = impl.split("-")[1]
        reason = backends.unavailable_reason(name)
        if reason is None and not backends._module(name).supports(device):
            reason = f"backend {name!r} does not step tensors on {device}"
        return reason
    if impl == "torch-fused" and device.type == "cpu" and args.precision == "fp16":
        return "torch's fused optimizers take no fp16 GradScaler on CPU"
    return None


# ---- timing ------------------------------------------------------------------------------------

class Clock:
    """CUDA events on a GPU (read after the run: no sync per iteration), perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b):
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def train_eager(impl, model, clips, args, device):
    wrapper, scheds = build(impl, model, args)
    clock, marks, losses = Clock(device), [], []
    for it in range(args.iters):
        x, y = clips.batch(it)
        t0 = clock.mark()
        with wrapper.optim_context(model):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        wrapper.backward(loss)
        t1 = clock.mark()
        wrapper.step()
        wrapper.zero_grad()
        for s in scheds:
            s.step()
        t2 = clock.mark()
        marks.append((t0, t1, t2))
        losses.append(loss.detach())
    return losses, marks, clock, wrapper


def train_graph(impl, model, clips, args, device):
    """The whole iteration in one CUDA graph (Note: fusedopt/schedulers/device.py)."""
    from fusedopt.schedulers import DeviceSchedule
    wrapper, scheds = build("fusedopt-cuda", model, args)
    schedule = DeviceSchedule(scheds, epoch_length=args.epoch_length)
    static_x, static_y = (t.clone() for t in clips.batch(0))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast("cuda", enabled=False))
    losses, clock, marks = [], Clock(device), []

    def iteration():
        wrapper.optimizer.zero_grad(set_to_none=False)
        with autocast:
            loss = nn.functional.cross_entropy(model(static_x).float(), static_y)
        loss.backward()
        wrapper.step()
        schedule.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):           # iteration 0, eagerly: creates grads and state
        t0 = clock.mark()
        losses.append(iteration().detach().clone())
        marks.append((t0, t0, clock.mark()))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = iteration()
    for it in range(1, args.iters):
        x, y = clips.batch(it)
        static_x.copy_(x)
        static_y.copy_(y)
        t0 = clock.mark()
        graph.replay()
        t2 = clock.mark()
        marks.append((t0, t0, t2))          # the optimizer's share is not separable in a graph
        losses.append(static_loss.detach().clone())
    schedule.sync_to_host()
    return losses, marks, clock, wrapper


def run_one(impl, init_state, clips, args, device):
    model, _ = build_model(args)
    model.load_state_dict(init_state)
    model.to(device).train()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer = train_graph if impl == "fusedopt-cuda-graph" else train_eager
    losses, marks, clock, wrapper = trainer(impl, model, clips, args, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    skip = min(args.warmup_iters, len(marks) - 1)
    optim = [clock.ms(t1, t2) for _, t1, t2 in marks[skip:]]
    iters = [clock.ms(t0, t2) for t0, _, t2 in marks[skip:]]
    return dict(impl=impl, status="ok", losses=[float(v) for v in torch.stack(losses).cpu()],
                optim_ms=_median(optim) if impl != "fusedopt-cuda-graph" else None,
                iter_ms=_median(iters),
                peak_mem_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                final_lr=[round(g["lr"], 10) for g in wrapper.param_groups][:3])


def _median(values):
    v = sorted(values)
    return v[len(v) // 2] if v else None


def agreement(results, args):
    """Each run's loss curve against the reference run's (torch-fused, else torch-foreach)."""
    ok = {r["impl"]: r for r in results if r["status"] == "ok"}
    ref_name = "torch-fused" if "torch-fused" in ok else "torch-foreach"
    ref = ok.get(ref_name)
    for r in ok.values():
        if ref is None or r is ref:
            continue
        a, b = r["losses"], ref["losses"]
        if args.precision == "fp32":
            n = min(args.agree_iters, len(a))
            diff = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a[:n], b[:n]))
            r["agreement"] = dict(vs=ref_name, max_rel_diff_first_iters=diff, iters=n,
                                  tolerance=args.fp32_tolerance,
                                  agrees=diff <= args.fp32_tolerance)
        else:
            q = max(1, len(a) // 4)
            ma, mb = sum(a[-q:]) / q, sum(b[-q:]) / q
            rel = abs(ma - mb) / max(abs(mb), 1e-12)
            r["agreement"] = dict(vs=ref_name, last_quarter_mean=ma, reference_mean=mb,
                                  rel_diff=rel, tolerance=args.amp_tolerance,
                                  agrees=rel <= args.amp_tolerance)
        if "optim_ms" in r and r.get("optim_ms") and ref.get("optim_ms"):
            r["optim_speedup_vs_ref"] = ref["optim_ms"] / r["optim_ms"]
        if r.get("iter_ms") and ref.get("iter_ms"):
            r["iter_speedup_vs_ref"] = ref["iter_ms"] / r["iter_ms"]


def plot(doc, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in ok:
        ax1.plot(r["losses"], label=r["impl"], lw=1)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("training loss")
    ax1.legend(fontsize=8)
    names = [r["impl"] for r in ok]
    optim = [r["optim_ms"] or 0 for r in ok]
    rest = [max(r["iter_ms"] - (r["optim_ms"] or 0), 0) for r in ok]
    ax2.barh(names, rest, label="forward + backward (graph: whole iteration)")
    ax2.barh(names, optim, left=rest, label="clip + step + scheduler")
    ax2.set_xlabel("ms per iteration (median)")
    ax2.legend(fontsize=8)
    o = doc["options"]
    fig.suptitle(f"{doc['model']}, {o['optimizer']} {o['precision']}, batch {o['batch']} x "
                 f"{o['frames']}x{o['size']}x{o['size']} on {doc['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def parse(argv=None):
    p = argparse.ArgumentParser(prog="fusedopt-bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--impl", default=None, help="comma list (default: every one that runs here)")
    p.add_argument("--iters", type=int, default=None, help="iterations (default 60; --tiny 6)")
    p.add_argument("--epoch-length", type=int, default=None, help="iterations per epoch")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="LinearLR warm-up iterations")
    p.add_argument("--warmup-iters", type=int, default=None, help="untimed first iterations")
    p.add_argument("--agree-iters", type=int, default=10)
    p.add_argument("--fp32-tolerance", type=float, default=1e-3,
                   help="max relative loss difference over --agree-iters (fp32)")
    p.add_argument("--amp-tolerance", type=float, default=0.05,
                   help="relative difference of the last quarter's mean loss (fp16/bf16)")
    p.add_argument("--tiny", action="store_true", help="the CPU mode CI runs")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    tiny = dict(iters=6, epoch_length=3, batch=2, frames=4, size=32, classes=4, warmup=2,
                warmup_iters=1)
    full = dict(iters=60, epoch_length=20, batch=8, frames=16, size=112, classes=400, warmup=10,
                warmup_iters=5)
    for k, v in (tiny if args.tiny else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.epochs = math.ceil(args.iters / args.epoch_length)
    return args


def main(argv=None):
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default = (["torch-foreach", "torch-fused", "fusedopt-cuda", "fusedopt-triton",
                "fusedopt-mmengine", "fusedopt-cuda-graph"] if device.type == "cuda"
               else ["torch-foreach", "torch-fused", "fusedopt-cpu", "fusedopt-mmengine"])
    impls = args.impl.split(",") if args.impl else default
    torch.manual_seed(0)
    model, model_name = build_model(args)
    init_state = copy.deepcopy(model.state_dict())
    clips = Clips(args, device)
    results = []
    for impl in impls:
        reason = unavailable(impl, args, device)
        if reason is not None:
            results.append(dict(impl=impl, status="skipped", reason=reason))
            print(f"{impl:22s} skipped: {reason}", flush=True)
            continue
        r = run_one(impl, init_state, clips, args, device)
        results.append(r)
        print(f"{impl:22s} loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, iteration "
              f"{r['iter_ms']:.2f} ms, optimizer {r['optim_ms'] or float('nan'):.3f} ms",
              flush=True)
    doc = dict(device=(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
               torch=torch.__version__, model=model_name, options=vars(args), results=results,
               provenance=provenance(device))   # device, git (dirty computed), versions
    agreement(results, args)
    for r in results:
        if "agreement" in r:
            a = r["agreement"]
            print(f"{r['impl']:22s} vs {a['vs']}: {'agrees' if a['agrees'] else 'DIFFERS'} "
                  f"({a.get('max_rel_diff_first_iters', a.get('rel_diff')):.2e}, tolerance "
                  f"{a['tolerance']:g}); optimizer "
                  f"{r.get('optim_speedup_vs_ref', float('nan')):.2f}x, iteration "
                  f"{r.get('iter_speedup_vs_ref', float('nan')):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot and plot(doc, args.plot):
        print(f"wrote {args.plot}")
    return doc


if __name__ == "__main__":
    main()
