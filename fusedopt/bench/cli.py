"""fusedopt-bench: time fusedopt against torch's optimizers (and apex / DeepSpeed / Transformer
Engine where importable) in one process on one device, beside a bandwidth stream of the same
device timed in the same rounds (the "vs stream" column). See ``fusedopt-bench --help`` and
bench/README.md.
"""
import argparse
import gc
import json
import math
import os
import re
import sys

import torch

from fusedopt import _precision
from fusedopt.bench import check as _check
from fusedopt.bench import impls as _impls
from fusedopt.bench import measure, presets, report

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS_DIR = "fusedopt-bench-results"   # default home of a run's JSON and plot, under the cwd
EXAMPLES = """examples:
  fusedopt-bench                                   # resnet50 AdamW, fusedopt vs torch: table, JSON, plot
  fusedopt-bench --numel 20M --tensors 200 --impl fusedopt,torch-fused --json r.json --plot r.png
  fusedopt-bench --numel 20M --tensors 200 --clip
  fusedopt-bench --numel 16000 --tensors 1000 --groups per-param --steps 200
  fusedopt-bench --preset vit-b16 --sweep groups
  fusedopt-bench --tensors 100 --sweep numel --optimizer sgd
  fusedopt-bench --preset host                     # host time: N tiny tensors, one group each
  fusedopt-bench e2e --help                        # a video model trained end to end (issue 14)
"""


def _count(text):
    """A positive count: 20000000, 20_000_000, 2e7, 20M, 64k, 1G."""
    m = re.fullmatch(r"\s*([0-9_]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"expected a positive count (e.g. 20000000, 2e7, 20M), "
                                         f"got {text!r}")
    value = float(m.group(1).replace("_", "")) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive whole count, got {text!r}")
    return int(value)


def _nonneg(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive(text):
    value = _nonneg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _groups(text):
    if text == "per-param":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1, 'per-param' or a positive number of groups, "
                                         f"got {text!r}")
    return str(value)


def _impl_list(text):
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of implementations")
    bad = [n for n in names if _impls.split(n)[0] not in _impls.IMPLS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown implementation {bad[0]!r}; choose from "
                                         f"{', '.join(_impls.IMPLS)}")
    bad = [n for n in names if _impls.split(n)[1] and not n.startswith("fusedopt")]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r}: a precision mode ({', '.join(_impls.MODES)}) "
                                         "applies to fusedopt's implementations only")
    return list(dict.fromkeys(names))


def build_parser():
    p = argparse.ArgumentParser(
        prog="fusedopt-bench", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time one optimizer step of fusedopt and of torch's implementations side by "
                    "side (same process, same params and grads, interleaved), beside a bandwidth "
                    "stream of the same device timed in the same rounds. Writes the table, a JSON "
                    f"and a plot ({RESULTS_DIR}/<device>/ unless --json/--plot say otherwise).")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="device to run on (default: cuda if available, else cpu)")
    p.add_argument("--optimizer", choices=list(_impls.optimizers()), default="adamw",
                   help="algorithm: a fusedopt class without 'Fused' (sgd and lars: momentum "
                        "0.9; bench/README.md gives each one's hyper-parameters); default adamw")
    p.add_argument("--numel", type=_count, default=None, metavar="N",
                   help="synthetic set: N parameters in all (e.g. 20M); default 20M")
    p.add_argument("--tensors", type=_positive, default=None, metavar="K",
                   help="synthetic set: K tensors of equal size; default 200")
    p.add_argument("--preset", choices=list(presets.PRESETS) + [presets.HOST], default=None,
                   help="a model's parameter shapes (default when no --numel/--tensors: "
                        f"resnet50); '{presets.HOST}': the host time of a step, "
                        f"N tensors of {presets.HOST_NUMEL} elements, one group each, N in "
                        f"{', '.join(map(str, presets.HOST_COUNTS))} (µs per step, ns per tensor)")
    p.add_argument("--groups", type=_groups, default="1", metavar="{1,per-param,N}",
                   help="param groups, each with its own lr: 1, one per tensor, or N; default 1")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="param dtype; default fp32")
    p.add_argument("--clip", action="store_true",
                   help="clip_grad_norm_(max_norm=1) before every step (fusedopt: its fused path)")
    p.add_argument("--amp", action="store_true",
                   help="fp16 loss scaling with a GradScaler (fusedopt: its fused unscale path)")
    p.add_argument("--impl", type=_impl_list, default=None, metavar="LIST",
                   help="comma list from: " + ", ".join(_impls.IMPLS) +
                        "; a fusedopt one with a precision mode suffix (" + ", ".join(_impls.MODES) +
                        ", e.g. fusedopt+master) runs in that mode (README, 'Low precision') "
                        "(default: fusedopt, in every mode for bf16/fp16, and torch's on this "
                        "device; unavailable ones are reported skipped with the reason)")
    p.add_argument("--steps", type=_positive, default=20, help="timed steps per implementation (default 20)")
    p.add_argument("--warmup", type=_nonneg, default=5, help="untimed steps first, interleaved too (default 5)")
    p.add_argument("--sweep", choices=["numel", "groups"], default=None,
                   help="repeat over parameter counts (synthetic sets) or group counts")
    p.add_argument("--json", metavar="PATH", default=None,
                   help=f"where to write the results as JSON; default "
                        f"{RESULTS_DIR}/<device>/<run>.json in the current directory")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help=f"where to write the plot (PNG); default {RESULTS_DIR}/<device>/<run>.png")
    return p


def resolve(args, parser):
    """Check option combinations; fill defaults that depend on others."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: cuda is not available here (torch {torch.__version__}, "
                     f"built with CUDA {torch.version.cuda})")
    synthetic = args.numel is not None or args.tensors is not None or args.sweep == "numel"
    if args.preset and synthetic:
        which = "--numel" if args.numel is not None else "--tensors" if args.tensors is not None else "--sweep numel"
        parser.error(f"argument --preset: not allowed with argument {which}")
    if args.sweep == "groups" and args.groups != "1":
        parser.error("argument --groups: not allowed with argument --sweep groups")
    if args.preset == presets.HOST and (args.sweep or args.groups != "1"):
        which = "--sweep" if args.sweep else "--groups"
        parser.error(f"argument {which}: not allowed with argument --preset {presets.HOST} "
                     "(it sweeps the tensor count, one group each)")
    if not synthetic and not args.preset:
        args.preset = "resnet50"
    if args.preset == presets.HOST:
        args.sweep, args.groups = presets.HOST, "per-param"
        args.shapes = [(presets.HOST_NUMEL,)] * max(presets.HOST_COUNTS)
    elif args.preset:
        args.shapes = presets.shapes(args.preset)
    else:
        args.tensors = args.tensors or 200
        top = 16 * 2**20 if args.device == "cpu" else 256 * 2**20
        args.numel = args.numel or (top if args.sweep == "numel" else 20_000_000)
        if args.numel < args.tensors:
            parser.error(f"argument --numel: {args.numel} parameters cannot fill --tensors "
                         f"{args.tensors} tensors")
        args.shapes = measure.synthetic_shapes(args.numel, args.tensors)
    args.tensors = len(args.shapes)
    args.numel = sum(math.prod(s) for s in args.shapes)
    if args.groups not in ("1", "per-param") and int(args.groups) > args.tensors:
        parser.error(f"argument --groups: {args.groups} groups for {args.tensors} tensors "
                     "(at most one group per tensor)")
    args.device_obj = torch.device(args.device)
    args.impl = args.impl or _impls.default_impls(args.device_obj, DTYPES[args.dtype],
                                                  host=args.sweep == presets.HOST)
    return args


def sweep_points(args):
    """[(sweep value or None, shapes, groups)]."""
    if args.sweep == presets.HOST:
        return [(n, [(presets.HOST_NUMEL,)] * n, "per-param") for n in presets.HOST_COUNTS]
    if args.sweep == "numel":
        start = max(args.tensors, 2**16)
        values, v = [], start
        while v < args.numel:
            values.append(v)
            v *= 4
        values.append(args.numel)
        return [(v, measure.synthetic_shapes(v, args.tensors), args.groups) for v in values]
    if args.sweep == "groups":
        values, v = [], 1
        while v < args.tensors:
            values.append(v)
            v *= 4
        values.append(args.tensors)
        return [(v, args.shapes, str(v)) for v in values]
    return [(None, args.shapes, args.groups)]


def _memory_check(args, live, elem, dtype):
    """Warn when the run will not fit in memory (every implementation keeps its own state, and
    one in a precision mode what that mode keeps)."""
    n_live = len(live)
    algo, flags = _impls.flags_of(args.optimizer)
    states = len(algo.state_names(flags))
    kept = sum(sum(_precision.bytes_per_param(dtype, s, states, w)[1:])
               for w, s, _ in (_precision.mode(_impls.MODES.get(_impls.split(i)[1], {}), dtype)
                               for i in live))
    need = args.numel * (elem * (2 + (1 if args.clip or args.amp else 0)) + kept)
    if args.device == "cuda":
        free = torch.cuda.mem_get_info(args.device_obj)[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f
                            if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            return
    if need > 0.8 * free:
        print(f"warning: about {need / 2**30:.1f} GiB needed (params, grads and {n_live} "
              f"optimizers' state), {free / 2**30:.1f} GiB free; use fewer --impl",
              file=sys.stderr)


def run(args):
    device, dtype = args.device_obj, DTYPES[args.dtype]
    host = args.sweep == presets.HOST
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    references = [] if host else [measure.Stream(device), measure.Copy(device)]
    bpp = measure.bytes_per_param(args.optimizer, dtype, clip=args.clip, amp=args.amp)
    points = sweep_points(args)
    what = args.preset or "synthetic"
    print(f"fusedopt-bench: {args.optimizer} {args.dtype}{' +clip' if args.clip else ''}"
          f"{' +amp' if args.amp else ''} on {device.type} ({report.device_slug(device)}, "
          f"{torch.get_num_threads()} threads) | {what}: " +
          (f"{presets.HOST_NUMEL}-element tensors, one group each, N = "
           f"{', '.join(map(str, presets.HOST_COUNTS))}" if host else
           f"{args.numel:,} params in {args.tensors} tensors, groups="
           f"{args.sweep == 'groups' and 'swept' or args.groups} | {bpp} B/param") +
          f" | {args.steps} steps after {args.warmup} warm-up", flush=True)
    live = [i for i in args.impl if _impls.unavailable_reason(i, args.optimizer, device) is None]
    if not host:
        _memory_check(args, live, torch.empty((), dtype=dtype).element_size(), dtype)
    checks = _check.check_all(args.impl, optimizer=args.optimizer, dtype=dtype, clip=args.clip,
                              amp=args.amp, device=device)
    progress = report.Progress(len(points), f"sweep {args.sweep}") if args.sweep else None
    results, ref_ms = [], {r: [] for r in references}
    for value, shapes, groups in points:
        entries, point_refs = measure.run_point(
            args.impl, optimizer=args.optimizer, shapes=shapes, groups=groups, dtype=dtype,
            clip=args.clip, amp=args.amp, steps=args.steps, warmup=args.warmup, device=device,
            references=references, host=host)
        for r, times in point_refs.items():
            ref_ms[r] += times
        numel = sum(math.prod(s) for s in shapes)
        extra = {"numel": numel, "tensors": len(shapes),
                 "groups": measure.group_count(groups, len(shapes))}
        if args.sweep:
            extra["sweep_value"] = value
        bytes_of = {i: numel * measure.bytes_per_param(args.optimizer, dtype, clip=args.clip,
                                                       amp=args.amp, mode=_impls.split(i)[1])
                    for i in args.impl if _impls.split(i)[1]}
        results += report.records(entries, bytes_per_step=bpp * numel, references=point_refs,
                                  extra=extra, bytes_of=bytes_of, checks=checks)
        gc.collect()
        if progress:
            progress.advance(f"{args.sweep}={value}")
    if progress:
        progress.close()
    if host:
        report.host_figures(results)
    options = {k: v for k, v in vars(args).items() if k not in ("shapes", "device_obj")}
    options.update(bytes_per_param=bpp, max_norm=_impls.MAX_NORM if args.clip else None,
                   hyper=_impls.hyper(args.optimizer),
                   sweep_values=[v for v, _, _ in points] if args.sweep else None)
    dev = report.device_info(device, ref_ms)
    dev["loadavg_1min_start"] = load_start
    return {"device": dev, "torch": report.torch_info(),
            "git": report.git_info(), "options": options, "results": results}


def show(data):
    d, o = data["device"], data["options"]
    sweep = o.get("sweep")
    if sweep == presets.HOST:
        report.print_host_table(data["results"])
        return
    per_point = [r["copy_gbps"] for r in data["results"] if r.get("copy_gbps")]
    spread = (f" (p20-p80 {d['copy_gbps_p20']:.1f}-{d['copy_gbps_p80']:.1f})"
              if d.get("copy_gbps_p20") else "")
    if not d.get("copy_gbps"):
        print("stream: not measured")
    elif sweep and per_point:
        print(f"stream: {min(per_point):.1f}-{max(per_point):.1f} GB/s, timed at each point "
              f"alongside its steps (each point's \"vs stream\" uses its own): {d['copy_method']}")
    else:
        print(f"stream: {d['copy_gbps']:.1f} GB/s median ({d['copy_gbps_best']:.1f} best)"
              f"{spread}: {d['copy_method']}")
    if d.get("real_copy_gbps"):
        print(f"copy_: {d['real_copy_gbps']:.1f} GB/s median ({d['real_copy_gbps_best']:.1f} "
              f"best, p20-p80 {d['real_copy_gbps_p20']:.1f}-{d['real_copy_gbps_p80']:.1f}): "
              f"{d['real_copy_method']}")
    for v in o.get("sweep_values") or [None]:
        rs = [r for r in data["results"] if r.get("sweep_value") == v]
        title = f"{sweep}={v}" if sweep else "results"
        copy = rs[0].get("copy_gbps") if rs else d.get("copy_gbps")
        real = rs[0].get("real_copy_gbps") if rs else d.get("real_copy_gbps")
        if rs:
            title += f" ({rs[0]['numel']:,} params, {rs[0]['tensors']} tensors, {rs[0]['groups']} groups"
            title += f"; stream {copy:.1f} GB/s)" if sweep and copy else ")"
        print()
        report.print_table(title, rs, copy_gbps=copy, real_copy_gbps=real)


def _count_text(n):
    for div, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def default_stem(args):
    """The file name of a run's results without suffix, from its options: adamw-resnet50,
    adamw-clip-20M-200t, sgd-bf16-16k-1000t-per-param, adamw-vit-b16-sweep-groups."""
    parts = [args.optimizer, args.dtype if args.dtype != "fp32" else None,
             "clip" if args.clip else None, "amp" if args.amp else None,
             args.preset or f"{_count_text(args.numel)}-{args.tensors}t",
             None if args.groups == "1" else "per-param" if args.groups == "per-param"
             else f"{args.groups}groups",
             f"sweep-{args.sweep}" if args.sweep else None]
    return "-".join(p for p in parts if p)


def output_paths(args, slug):
    """(JSON path, plot path): --json / --plot, else RESULTS_DIR/<device>/<run>.json and .png
    under the current directory."""
    stem = os.path.join(RESULTS_DIR, slug, default_stem(args))
    return args.json or stem + ".json", args.plot or stem + ".png"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["e2e"]:          # fusedopt-bench e2e ...: a training run (fusedopt/bench/e2e.py)
        from fusedopt.bench import e2e
        e2e.main(argv[1:])
        return
    parser = build_parser()
    args = resolve(parser.parse_args(argv), parser)
    data = run(args)
    show(data)
    json_path, plot_path = output_paths(args, data["device"]["slug"])
    data["options"].update(json=json_path, plot=plot_path)
    print()
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1)
    print(f"wrote {os.path.abspath(json_path)}")   # absolute: scripts/bench.sh runs elsewhere
    from fusedopt.bench import plot
    if plot.have_matplotlib():
        os.makedirs(os.path.dirname(os.path.abspath(plot_path)), exist_ok=True)
        plot.plot(data, plot_path)
        print(f"wrote {os.path.abspath(plot_path)}")
    else:
        print("no plot: matplotlib is not installed (pip install 'fusedopt[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
