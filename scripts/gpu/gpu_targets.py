"""The GPU benchmark targets of the CUDA and Triton issues: which fusedopt-bench runs measure
them (``--list``, read by scripts/gpu_check.sh) and whether the JSON of those runs meets them
(``--report DIR``, a markdown table).

usage: python scripts/gpu/gpu_targets.py --list [--dry]
       python scripts/gpu/gpu_targets.py --report DIR_OF_JSON
"""
import argparse
import json
import os

GPU_IMPLS = "fusedopt-cuda,fusedopt-triton,torch-fused,torch-foreach"
DRY_IMPLS = "fusedopt-cpu,torch-fused,torch-foreach"

# name -> (fusedopt-bench arguments on a GPU, the same run's tiny CPU form for --dry)
RUNS = {
    "adamw-500M": ("--numel 500M --tensors 100 --steps 20 --warmup 5",
                   "--numel 200k --tensors 20 --steps 3 --warmup 1"),
    "adamw-clip-500M": ("--numel 500M --tensors 100 --clip --steps 20 --warmup 5",
                        "--numel 200k --tensors 20 --clip --steps 3 --warmup 1"),
    "adamw-amp-clip-500M": ("--numel 500M --tensors 100 --amp --clip --steps 20 --warmup 5",
                            "--numel 200k --tensors 20 --amp --clip --steps 3 --warmup 1"),
    "vit-b16-per-param": ("--preset vit-b16 --groups per-param --steps 30 --warmup 5",
                          "--numel 20k --tensors 150 --groups per-param --steps 3 --warmup 1"),
    "detector-465-per-param": ("--preset detector-465 --groups per-param --steps 30 --warmup 5",
                               "--numel 20k --tensors 465 --groups per-param --steps 3 "
                               "--warmup 1"),
}


def _record(doc, impl):
    for r in doc.get("results", []):
        if r.get("impl") == impl and r.get("status") == "ok":
            return r
    return None


def _load(folder, run):
    path = os.path.join(folder, f"{run}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _ours(doc):
    """The record of fusedopt's own backend in this run: cuda on a GPU, cpu in a dry run."""
    return _record(doc, "fusedopt-cuda") or _record(doc, "fusedopt-cpu")


def _check(value, goal, higher=True):
    if value is None:
        return "not measured"
    return "met" if (value >= goal if higher else value <= goal) else "MISSED"


# (issue, target, run, function doc -> (figure, goal, higher is better))
def _vs_fused(doc):
    r = _ours(doc)
    return r and r.get("vs_torch_fused")


def _stream(doc):
    r = _ours(doc)
    return r and r.get("roofline_frac")


def _triton_vs_cuda(doc):
    cuda, tri = _record(doc, "fusedopt-cuda"), _record(doc, "fusedopt-triton")
    return cuda and tri and cuda["median_ms"] / tri["median_ms"]


def _triton_time_over_cuda(doc):
    cuda, tri = _record(doc, "fusedopt-cuda"), _record(doc, "fusedopt-triton")
    return cuda and tri and tri["median_ms"] / cuda["median_ms"]


TARGETS = [
    ("12", "fp32 AdamW 500M: fraction of the copy bandwidth", "adamw-500M", _stream, 0.90, True),
    ("12", "fp32 AdamW 500M: speed vs torch fused", "adamw-500M", _vs_fused, 1.0, True),
    ("12", "clip + AdamW: speed vs torch clip(foreach) + fused", "adamw-clip-500M", _vs_fused,
     1.25, True),
    ("12", "GradScaler unscale + clip + step vs torch's", "adamw-amp-clip-500M", _vs_fused, 1.4,
     True),
    ("12", "ViT-B per-param groups vs torch fused", "vit-b16-per-param", _vs_fused, 10.0, True),
    ("12", "detector 465 per-param groups vs torch fused", "detector-465-per-param", _vs_fused,
     10.0, True),
    ("13", "triton throughput / cuda's, AdamW 500M", "adamw-500M", _triton_vs_cuda, 0.85, True),
    ("13", "triton time / cuda's, detector 465 groups", "detector-465-per-param",
     _triton_time_over_cuda, 1.2, False),
]


def report(folder):
    lines = ["| issue | target | goal | figure | status | run |", "| --- | --- | --- | --- | --- | --- |"]
    for issue, what, run, figure, goal, higher in TARGETS:
        doc = _load(folder, run)
        value = figure(doc) if doc else None
        shown = "-" if value is None else f"{value:.3g}"
        lines.append(f"| {issue} | {what} | {'>=' if higher else '<='} {goal:g} | {shown} | "
                     f"{_check(value, goal, higher)} | {run} |")
    for run in RUNS:
        doc = _load(folder, run)
        if doc is None:
            continue
        device = doc.get("device", {})
        lines.append("")
        lines.append(f"{run}: {device.get('name')}, copy {device.get('copy_gbps', 0):.0f} GB/s")
        for r in doc.get("results", []):
            if r.get("status") == "ok":
                launches = r.get("launches_per_step")
                lines.append(f"- {r['impl']}: {r['median_ms']:.3f} ms, {r['gbps']:.0f} GB/s "
                             f"({100 * r['roofline_frac']:.0f}% of copy), "
                             f"{r['vs_torch_fused']:.2f}x torch-fused"
                             + (f", {launches} launches" if launches is not None else ""))
            else:
                lines.append(f"- {r.get('impl')}: {r.get('status')} ({r.get('reason')})")
    path = os.path.join(folder, "triton-blocks.json")
    if os.path.exists(path):
        with open(path) as f:
            blocks = json.load(f)
        lines += ["", f"Triton AdamW launch sizes ({blocks['numel']:,} fp32 params, {blocks['device']}):"]
        for v in blocks["variants"]:
            lines.append(f"- BLOCK {v['block']}, {v['warps']} warps{' (current)' if v['default'] else ''}: "
                         f"{v['median_ms']} ms, {v['gbps']} GB/s, {v['regs']} registers, "
                         f"{v['spills']} spills, {v['programs_per_sm']} programs/SM")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--dry", action="store_true")
    ap.add_argument("--report", metavar="DIR")
    args = ap.parse_args()
    if args.list:
        for name, (gpu, dry) in RUNS.items():
            if args.dry:
                print(f"{name}|{dry} --device cpu --impl {DRY_IMPLS}")
            else:
                print(f"{name}|{gpu} --device cuda --impl {GPU_IMPLS}")
    if args.report:
        print(report(args.report))


if __name__ == "__main__":
    main()
