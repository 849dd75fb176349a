"""The real OpenMMLab configs, built two ways: mmengine's builder against fusedopt's standalone layer.

    python scripts/real_configs.py --source mmpretrain=PATH --source mmaction2=PATH \
        [--json bench/results/configs/real_configs.json] [--steps 3] [--backends reference,cpu]

PATH is a checkout or a bare git directory (its HEAD's ``configs/`` is read and the commit is
recorded) or a folder holding ``configs/``. Every ``configs/**/*.py`` outside ``_base_`` folders
that mmengine's ``Config.fromfile`` loads and that has an ``optim_wrapper`` is collected; equal
``optim_wrapper`` dicts count once (a "distinct wrapper"). Each distinct wrapper is built on a
stand-in model (``stand_in``: conv, batch/layer/group norm, depthwise conv, linear layers, a frozen
layer, and one parameter named after each ``custom_keys`` key, so every rule of the config picks
something) by ``mmengine.optim.build_optim_wrapper`` and by ``fusedopt.build_optim_wrapper``,
stepped ``--steps`` times through ``update_params`` with equal grads (a loss linear in the params,
grads of norm ~100, so ``clip_grad=dict(max_norm=40)`` clips), in fp32 and fp64, and compared:
param groups (every key), params and optimizer states after every step.

Modes (Note [real config modes]):
- ``as-written``: both sides build the optimizer type the config names (torch.optim's classes
  from both registries): the constructor, wrapper, clipping and accumulation are compared.
- ``fused-<backend>``: fusedopt's side builds the fused class for the type (Adam -> FusedAdam,
  AdamW -> FusedAdamW, SGD -> FusedSGD, and mmpretrain's LARS/Lamb -> FusedLARS/FusedLAMB where
  fusedopt has them), mmengine's side torch's class (mmpretrain's LARS/Lamb when mmpretrain
  imports): fusedopt's optimizers, fused clipping included, against the optimizers the configs
  were written for.

Agreement is the project's tolerance table (tests/tolerances.py; bitwise equality counted too).
A difference that goes away when the wrapper's ``clip_grad`` is dropped, in fp64, is counted as
the known one (``fusedopt.clip_grad_norm_`` accumulates fp64 grads in fp32; being fixed
elsewhere). Wrappers that need what mmengine alone cannot build (a constructor or optimizer
registered by mmpretrain/mmaction2, DeepSpeed) are counted separately. ``AmpOptimWrapper``
is compared as ``OptimWrapper`` (mmengine refuses AMP without a GPU; loss scaling is not what
is compared here).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Note [real config modes]: the config's optimizer type -> fusedopt's class for the fused modes
FUSED = {"Adam": "FusedAdam", "AdamW": "FusedAdamW", "SGD": "FusedSGD", "LARS": "FusedLARS",
         "Lamb": "FusedLAMB"}
# optimizer types the configs take from mmpretrain (registered there, not in mmengine)
MMPRETRAIN_OPTIMIZERS = ("LARS", "Lamb")
AMP_ONLY_KEYS = ("loss_scale", "dtype", "use_fsdp")


def _tolerances():
    spec = importlib.util.spec_from_file_location("_tolerances", ROOT / "tests" / "tolerances.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TOLERANCE


# -- the configs ---------------------------------------------------------------------------------
def export_configs(path: Path, out: Path):
    """(folder holding configs/, commit or None) for a checkout, a bare git dir or a folder."""
    def git(*args, **kw):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, check=True,
                              timeout=300, **kw).stdout
    try:
        commit = git("rev-parse", "HEAD", text=True).strip()
    except (OSError, subprocess.SubprocessError):
        return path, None
    out.mkdir(parents=True)
    tarfile.open(fileobj=io.BytesIO(git("archive", "HEAD", "configs"))).extractall(out)
    return out, commit


def load_configs(name: str, folder: Path):
    """Every loadable config's optim_wrapper: ({'loaded': n, ...}, [(relpath, dict)])."""
    from mmengine.config import Config
    stats, errors, found = Counter(), Counter(), []
    files = sorted(p for p in (folder / "configs").rglob("*.py") if "_base_" not in p.parts)
    for f in files:
        rel = f"{name}/{f.relative_to(folder)}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = Config.fromfile(str(f))
        except Exception as e:              # noqa: BLE001 - a config mmengine cannot load
            stats["load_failed"] += 1
            errors[f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"] += 1
            continue
        stats["loaded"] += 1
        wrapper = cfg.get("optim_wrapper")
        if wrapper is None:
            stats["no_optim_wrapper"] += 1
            continue
        found.append((rel, wrapper.to_dict() if hasattr(wrapper, "to_dict") else dict(wrapper)))
    return dict(stats, files=len(files), load_errors=dict(errors.most_common())), found


def canonical(cfg) -> str:
    return json.dumps(cfg, sort_keys=True, default=repr)


def category(cfg, registries) -> str | None:
    """Why mmengine alone cannot build ``cfg`` (None: it can)."""
    constructor = cfg.get("constructor")
    ctype = constructor.get("type") if isinstance(constructor, dict) else constructor
    if ctype is not None and registries["constructors"].get(ctype) is None:
        return f"constructor {ctype}"
    wtype = cfg.get("type", "OptimWrapper")
    if wtype == "DeepSpeedOptimWrapper" or registries["wrappers"].get(wtype) is None:
        return f"wrapper {wtype}"
    otype = cfg["optimizer"].get("type")
    if registries["optimizers"].get(otype) is None:
        return f"optimizer {otype}"
    return None


# -- the stand-in model --------------------------------------------------------------------------
def stand_in(cfg, dtype) -> nn.Module:
    """A small model on which every rule of ``cfg``'s paramwise_cfg selects some parameter."""
    torch.manual_seed(0)
    m = nn.Module()
    m.backbone = nn.Module()
    m.backbone.conv = nn.Conv2d(3, 4, 3)
    m.backbone.bn = nn.BatchNorm2d(4)
    m.backbone.dwconv = nn.Conv2d(4, 4, 3, groups=4)
    m.backbone.ln = nn.LayerNorm(4)
    m.backbone.gn = nn.GroupNorm(2, 4)
    m.backbone.cls_token = nn.Parameter(torch.randn(1, 1, 4))
    m.backbone.pos_embed = nn.Parameter(torch.randn(1, 5, 4))
    m.neck = nn.Linear(4, 6)
    m.head = nn.Module()
    m.head.fc = nn.Linear(6, 3)
    m.frozen = nn.Linear(2, 2)
    m.frozen.requires_grad_(False)
    custom_keys = (cfg.get("paramwise_cfg") or {}).get("custom_keys") or {}
    for i, key in enumerate(sorted(custom_keys)):
        # "a.b.c" -> extra<i>.a.b (modules) . c (a parameter); "a." -> extra<i>.a.weight
        parts = [p for p in key.split(".")[:-1] if p]
        node = nn.Module()
        m.add_module(f"extra{i}", node)
        for part in parts:
            child = nn.Module()
            node.add_module(part, child)
            node = child
        node.register_parameter(key.split(".")[-1] or "weight",
                                nn.Parameter(torch.randn(*((3, 5) if i % 2 else (5,)))))
    return m.to(dtype)


def grads(model, steps, scale=10.0):
    """Per step, name -> grad (norm ~100 over the stand-in's ~200 trainable elements)."""
    g = torch.Generator().manual_seed(1)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{n: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale
             for n, p in named} for _ in range(steps)]


# -- one run -------------------------------------------------------------------------------------
def snapshot(model, wrapper):
    opt = wrapper.optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    states = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                states[f"{names[id(p)]}:{k}"] = v.detach().clone()
    groups = {}
    for group in opt.param_groups:
        for p in group["params"]:
            groups[names[id(p)]] = {k: v for k, v in group.items() if k != "params"}
    return params, states, groups


def run(build, cfg, dtype, steps):
    """Build with ``build(model, cfg)``, step; a list of snapshots (one after the build, one per
    step) or the exception raised."""
    model = stand_in(cfg, dtype)
    try:
        wrapper = build(model, copy.deepcopy(cfg))
        out = [snapshot(model, wrapper)]
        for step_grads in grads(model, steps):
            loss = sum((p * step_grads[n]).sum() for n, p in model.named_parameters()
                       if p.requires_grad)
            wrapper.update_params(loss)
            out.append(snapshot(model, wrapper))
        return out
    except Exception as e:                  # noqa: BLE001 - reported as a difference
        return e


def compare(a, b, dtype, tol, check_groups):
    """{'bitwise', 'agree', 'max_abs', 'first'}: ``a`` (mmengine) against ``b`` (fusedopt)."""
    rtol, atol = tol[dtype]
    res = {"bitwise": True, "agree": True, "max_abs": 0.0, "first": None}

    def differ(what, bitwise_only=False):
        res["bitwise"] = False
        if not bitwise_only:
            res["agree"] = False
            res["first"] = res["first"] or what

    for step, ((pa, sa, ga), (pb, sb, gb)) in enumerate(zip(a, b)):
        if check_groups and ga != gb:
            name = next(n for n in ga if ga[n] != gb.get(n))
            differ(f"step {step}: group of {name}: {ga[name]} != {gb.get(name)}")
        tensors = [(f"param {n}", pa[n], pb[n]) for n in pa]
        tensors += [(f"state {k}", sa[k], sb[k]) for k in sa if k in sb]
        for what, x, y in tensors:
            x, y = x.to(dtype), y.to(dtype)
            if torch.equal(x, y):
                continue
            diff = (x - y).abs().max().item() if x.numel() else 0.0
            res["max_abs"] = max(res["max_abs"], diff)
            close = torch.allclose(y, x, rtol=rtol, atol=atol)
            differ(f"step {step}: {what}: max |diff| {diff:.3g}", bitwise_only=close)
    return res


# -- the two builders ----------------------------------------------------------------------------
def builders(mode, mmpretrain_opts):
    import mmengine.optim
    import fusedopt

    def plain(cfg):
        cfg = copy.deepcopy(cfg)
        if cfg.get("type") == "AmpOptimWrapper":
            cfg["type"] = "OptimWrapper"
            for k in AMP_ONLY_KEYS:
                cfg.pop(k, None)
        return cfg

    def mm(model, cfg):
        cfg = plain(cfg)
        otype = cfg["optimizer"]["type"]
        if otype in MMPRETRAIN_OPTIMIZERS and otype in mmpretrain_opts:
            cfg["optimizer"]["type"] = mmpretrain_opts[otype]
        return mmengine.optim.build_optim_wrapper(model, cfg)

    def fo(model, cfg):
        cfg = plain(cfg)
        if mode != "as-written":
            cfg["optimizer"]["type"] = FUSED[cfg["optimizer"]["type"]]
            cfg["optimizer"]["backend"] = mode.split("-", 1)[1]
        return fusedopt.build_optim_wrapper(model, cfg)
    return mm, fo


def mmpretrain_optimizers():
    """mmpretrain's LARS and Lamb classes ({} when mmpretrain is not installed) and how they
    were loaded. ``import mmpretrain`` imports its whole model zoo (torchvision among others);
    where that fails, the two optimizer modules, which import torch and ``mmpretrain.registry``
    only, are executed from the installed package's files without the package's __init__."""
    try:
        from mmpretrain.engine.optimizers import LARS, Lamb
        return {"LARS": LARS, "Lamb": Lamb}, "imported"
    except Exception as e:                  # noqa: BLE001 - reported in the summary
        why = f"{type(e).__name__}: {e}"
    spec = importlib.util.find_spec("mmpretrain")
    if spec is None or not spec.submodule_search_locations:
        return {}, why
    pkg = Path(next(iter(spec.submodule_search_locations)))
    import types
    stub = types.ModuleType("mmpretrain")
    stub.__path__ = [str(pkg)]
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "mmpretrain"}
    sys.modules["mmpretrain"] = stub
    if "mmpretrain.registry" in saved:      # registered its scope in mmengine's registries
        sys.modules["mmpretrain.registry"] = saved["mmpretrain.registry"]
    try:
        importlib.import_module("mmpretrain.registry")
        out = {}
        for name, file in (("LARS", "lars"), ("Lamb", "lamb")):
            mspec = importlib.util.spec_from_file_location(
                f"_mmpretrain_{file}", pkg / "engine" / "optimizers" / f"{file}.py")
            mod = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(mod)
            out[name] = getattr(mod, name)
    except Exception as e:                  # noqa: BLE001
        return {}, f"{why}; loading the files: {type(e).__name__}: {e}"
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "mmpretrain"]:
            del sys.modules[k]
        sys.modules.update(saved)
    from importlib.metadata import version
    return out, (f"mmpretrain {version('mmpretrain')}: engine/optimizers/lars.py and lamb.py "
                 f"executed without the package's __init__, which failed: {why}")


def fused_available(otype) -> bool:
    import fusedopt
    return otype in FUSED and hasattr(fusedopt, FUSED[otype])


# -- the whole comparison ------------------------------------------------------------------------
def compare_wrapper(cfg, modes, steps, tol, mm_opts, log):
    otype = cfg["optimizer"].get("type")
    results = {}
    for mode in modes:
        if mode == "as-written" and otype in MMPRETRAIN_OPTIMIZERS:
            continue                        # fusedopt's registry has no 'LARS'/'Lamb'
        if mode != "as-written" and not fused_available(otype):
            continue
        if otype in MMPRETRAIN_OPTIMIZERS and otype not in mm_opts:
            continue                        # nothing to compare FusedLARS/FusedLAMB with
        mm, fo = builders(mode, mm_opts)
        for dname, dtype in DTYPES.items():
            log.clear()
            a, b = run(mm, cfg, dtype, steps), run(fo, cfg, dtype, steps)
            entry = {"warnings": list(log)} if log else {}
            if isinstance(a, Exception) or isinstance(b, Exception):
                entry.update(agree=type(a) is type(b), bitwise=type(a) is type(b),
                             mmengine=_err(a), fusedopt=_err(b))
            else:
                entry.update(compare(a, b, dtype, tol, check_groups=mode == "as-written"))
                if not entry["agree"] and dtype == torch.float64 and cfg.get("clip_grad"):
                    unclipped = {k: v for k, v in cfg.items() if k != "clip_grad"}
                    again = compare(run(mm, unclipped, dtype, steps),
                                    run(fo, unclipped, dtype, steps), dtype, tol,
                                    check_groups=mode == "as-written")
                    entry["known_fp64_clip"] = bool(again["agree"])
            results.setdefault(mode, {})[dname] = entry
    return results


def _err(x):
    return f"{type(x).__name__}: {str(x).splitlines()[0][:200]}" if isinstance(x, Exception) \
        else None


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def versions(mm_how):
    import mmengine
    import fusedopt
    from fusedopt.bench.report import git_info
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "mmengine": mmengine.__version__, "fusedopt": fusedopt.__version__,
           "fusedopt_git": git_info()}
    for mod in ("mmpretrain", "mmcv"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception as e:              # noqa: BLE001
            out[mod] = f"not importable ({type(e).__name__})"
    out["mmpretrain_optimizers"] = mm_how
    return out


def summarise(wrappers, modes):
    out = {}
    for mode in modes:
        for dname in DTYPES:
            rows = [w for w in wrappers if dname in w["results"].get(mode, {})]
            if not rows:
                continue
            res = [w["results"][mode][dname] for w in rows]
            known = sum(1 for r in res if r.get("known_fp64_clip"))
            out.setdefault(mode, {})[dname] = {
                "compared": len(rows), "agree": sum(r["agree"] for r in res),
                "bitwise": sum(r["bitwise"] for r in res), "known_fp64_clip": known,
                "differ": [w["id"] for w, r in zip(rows, res)
                           if not r["agree"] and not r.get("known_fp64_clip")]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backends", default="reference,cpu",
                    help="fused modes to run (comma-separated backends; '' for none)")
    ap.add_argument("--limit", type=int, default=None, help="first N distinct wrappers only")
    args = ap.parse_args(argv)

    import fusedopt
    from mmengine.logging import MMLogger
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
    import mmengine.optim  # noqa: F401 - registers mmengine's wrappers and constructors
    MMLogger.get_instance("real_configs", log_level="ERROR")   # quiet paramwise_options
    keep = _Keep()
    logging.getLogger("fusedopt.config").addHandler(keep)
    registries = {"constructors": OPTIM_WRAPPER_CONSTRUCTORS, "wrappers": OPTIM_WRAPPERS,
                  "optimizers": OPTIMIZERS}
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in fusedopt.available_backends():
            ap.error(f"--backends: {b!r} is not available here ({fusedopt.available_backends()})")
    modes = ["as-written", *(f"fused-{b}" for b in backends)]
    mm_opts, mm_how = mmpretrain_optimizers()
    tol = _tolerances()

    sources, distinct = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.source:
            name, _, path = spec.partition("=")
            folder, commit = export_configs(Path(path), Path(tmp) / name)
            stats, found = load_configs(name, folder)
            sources.append(dict(name=name, path=path, commit=commit, **stats))
            for rel, cfg in found:
                distinct.setdefault(canonical(cfg), (cfg, []))[1].append(rel)

    wrappers, outside = [], Counter()
    for i, (cfg, configs) in enumerate(list(distinct.values())[:args.limit]):
        why = category(cfg, registries)
        if why is not None and not (why.startswith("optimizer ")
                                    and cfg["optimizer"]["type"] in MMPRETRAIN_OPTIMIZERS):
            outside[why] += 1
            continue
        row = {"id": i, "configs": len(configs), "example": configs[0],
               "type": cfg.get("type", "OptimWrapper"), "optimizer": cfg["optimizer"]["type"],
               "clip_grad": cfg.get("clip_grad"),
               "custom_keys": sorted(((cfg.get("paramwise_cfg") or {}).get("custom_keys")
                                      or {}).items(), key=str)}
        try:
            row["results"] = compare_wrapper(cfg, modes, args.steps, tol, mm_opts, keep.messages)
        except Exception:                   # noqa: BLE001 - a bug of this tool: say where
            traceback.print_exc()
            row["results"] = {}
        if row["results"]:
            wrappers.append(row)
        else:
            outside[f"optimizer {row['optimizer']} (no comparison here)"] += 1
        flag = " ".join(f"{m}/{d}:{'=' if r['bitwise'] else '~' if r['agree'] else 'X'}"
                        for m, rs in row["results"].items() for d, r in rs.items())
        print(f"[{i:3d}] {row['optimizer']:8s} x{len(configs):<3d} {flag}  {configs[0]}",
              flush=True)

    entry_keys = Counter(k for cfg, _ in distinct.values()
                         for e in ((cfg.get("paramwise_cfg") or {}).get("custom_keys")
                                   or {}).values() for k in e)
    summary = {"command": "python scripts/real_configs.py " + " ".join(
                   a if "=" not in a else a.split("=")[0] + "=..." for a in (argv or sys.argv[1:])),
               "versions": versions(mm_how), "sources": sources, "steps": args.steps,
               "distinct_wrappers": len(distinct), "compared": len(wrappers),
               "not_compared": dict(outside.most_common()),
               "custom_keys_entry_keys": dict(entry_keys.most_common()),
               "results": summarise(wrappers, modes), "wrappers": wrappers}
    print(json.dumps({k: summary[k] for k in ("distinct_wrappers", "compared", "not_compared",
                                               "results")}, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=repr)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
