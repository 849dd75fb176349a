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
grads of norm ~160, so ``clip_grad=dict(max_norm=40)`` clips), in fp32 and fp64, and compared:
param groups (every key), params and optimizer states after every step.

Modes:
- ``as-written``: both sides build the optimizer type the config names: torch.optim's class
  from both registries, so the constructor, wrapper, clipping and accumulation are compared
  (and must be bitwise equal); for mmpretrain's ``LARS``/``Lamb``, fusedopt's registry gives
  FusedLARS/FusedLAMB on the default backend and mmengine's side mmpretrain's classes.
- ``fused-<backend>``: fusedopt's side builds the fused class for the type (Adam -> FusedAdam,
  AdamW -> FusedAdamW, SGD -> FusedSGD, LARS -> FusedLARS, Lamb -> FusedLAMB) on that backend,
  mmengine's side the class the config was written for (torch's, or mmpretrain's LARS/Lamb
  when mmpretrain is installed; ``mmpretrain_optimizers``): fusedopt's optimizers, fused
  clipping included. Other types (RMSprop) run as written only.

Agreement is the project's tolerance table (tests/tolerances.py); bitwise equality is counted
too. An fp64 difference is put down to a KNOWN cause only when removing that cause removes it
(``explain``). Wrappers that need what mmengine alone cannot build (a constructor registered by
mmpretrain/mmaction2, DeepSpeed) are counted separately, and so are mmpretrain's LARS/Lamb
(``results_mmpretrain_optimizers``). ``AmpOptimWrapper`` is compared as ``OptimWrapper``
(mmengine refuses AMP without a GPU; loss scaling is not what is compared here).
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
# the config's optimizer type -> fusedopt's class in the fused modes
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
    # mmengine registers DeepSpeedOptimWrapper, but it steps through a DeepSpeed engine
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
    """Per step, name -> grad: N(0, scale^2) elements, a norm of 162 over the 251 trainable
    elements of a stand-in without custom_keys at the default scale."""
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


def run(build, cfg, dtype, steps, scale=10.0):
    """Build with ``build(model, cfg)``, step; a list of snapshots (one after the build, one per
    step) or the exception raised."""
    model = stand_in(cfg, dtype)
    try:
        wrapper = build(model, copy.deepcopy(cfg))
        out = [snapshot(model, wrapper)]
        for step_grads in grads(model, steps, scale):
            loss = sum((p * step_grads[n]).sum() for n, p in model.named_parameters()
                       if p.requires_grad)
            wrapper.update_params(loss)
            out.append(snapshot(model, wrapper))
        return out
    except Exception as e:                  # noqa: BLE001 - reported as a difference
        return e


def compare(a, b, dtype, tol, same_class):
    """{'bitwise', 'agree', 'max_abs', 'first'}: ``a`` (mmengine) against ``b`` (fusedopt).
    Group settings: every key when both sides built the same class, else the keys of ``a``'s
    groups that ``b``'s have too (torch's foreach/fused/... are not fusedopt's arguments; the
    custom_keys entries' keys are in both: fusedopt's constructor passes them through)."""
    rtol, atol = tol[dtype]
    res = {"bitwise": True, "agree": True, "max_abs": 0.0, "first": None}

    def differ(what, bitwise_only=False):
        res["bitwise"] = False
        if not bitwise_only:
            res["agree"] = False
            res["first"] = res["first"] or what

    for step, ((pa, sa, ga), (pb, sb, gb)) in enumerate(zip(a, b)):
        if ga.keys() != gb.keys():
            differ(f"step {step}: params in groups: {sorted(ga.keys() ^ gb.keys())} on one "
                   "side only")
        if same_class and sa.keys() != sb.keys():
            differ(f"step {step}: states on one side only: {sorted(sa.keys() ^ sb.keys())}")
        for name, settings in ga.items():
            other = gb.get(name, {})
            keys = settings.keys() | other.keys() if same_class else settings.keys() & other.keys()
            bad = [k for k in sorted(keys) if settings.get(k) != other.get(k)]
            if bad:
                differ(f"step {step}: group of {name}: "
                       + ", ".join(f"{k}={settings.get(k)!r} vs {other.get(k)!r}" for k in bad))
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
        if otype in MMPRETRAIN_OPTIMIZERS and otype not in mm_opts:
            continue                        # mmengine's side cannot build it
        if mode != "as-written" and not fused_available(otype):
            continue
        # as written, fusedopt's registry gives LARS/Lamb its own classes (mmengine's side
        # mmpretrain's), everything else torch's class on both sides
        same_class = mode == "as-written" and otype not in MMPRETRAIN_OPTIMIZERS
        mm, fo = builders(mode, mm_opts)
        for dname, dtype in DTYPES.items():
            log.clear()
            a, b = run(mm, cfg, dtype, steps), run(fo, cfg, dtype, steps)
            entry = {"warnings": list(log)} if log else {}
            if isinstance(b, NotImplementedError) and not isinstance(a, Exception):
                entry.update(unavailable=_err(b))     # a backend without this algorithm yet
            elif isinstance(a, Exception) or isinstance(b, Exception):
                entry.update(agree=type(a) is type(b), bitwise=type(a) is type(b),
                             mmengine=_err(a), fusedopt=_err(b))
            else:
                entry.update(compare(a, b, dtype, tol, same_class))
                if not entry["agree"] and dtype == torch.float64:
                    entry["explained"] = explain(mm, fo, cfg, dtype, steps, tol, same_class)
            results.setdefault(mode, {})[dname] = entry
    return results


# the causes of fp64 differences found so far, each confirmed by removing it (``explain``)
KNOWN = {
    # mmpretrain's Lamb adds every grad's square sum into torch.zeros(1), a float32 tensor, even
    # for fp64 grads; FusedLAMB takes the global norm in the grads' dtype, as timm's Lamb does
    # (README, "LAMB, LARS and Lion")
    "lamb_global_norm": "mmpretrain's Lamb sums fp64 grads' squares into a float32 tensor: "
                        "agrees when the grads' norm is under max_grad_norm",
}


def explain(mm, fo, cfg, dtype, steps, tol, same_class):
    """The KNOWN cause of an fp64 difference, or None."""
    def agrees(c, scale=10.0):
        a, b = run(mm, c, dtype, steps, scale), run(fo, c, dtype, steps, scale)
        return not isinstance(a, Exception) and not isinstance(b, Exception) \
            and compare(a, b, dtype, tol, same_class)["agree"]
    if cfg["optimizer"]["type"] == "Lamb" and agrees(cfg, scale=1e-4):
        return "lamb_global_norm"
    return None


def _err(x):
    return f"{type(x).__name__}: {str(x).splitlines()[0][:200]}" if isinstance(x, Exception) \
        else None


class _Keep(logging.Handler):
    """fusedopt's config warnings, but the frozen-parameter one both libraries give for the
    stand-in's frozen layer."""
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        if "since its requires_grad=False" not in record.getMessage():
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
    """mode -> dtype -> counts over ``wrappers``; ``differ`` lists the ids of those that neither
    agree nor differ by a KNOWN cause."""
    out = {}
    for mode in modes:
        for dname in DTYPES:
            rows = [(w, w["results"][mode][dname]) for w in wrappers
                    if dname in w["results"].get(mode, {})]
            done = [(w, r) for w, r in rows if "unavailable" not in r]
            if not rows:
                continue
            explained = Counter(r.get("explained") for _, r in done if not r["agree"])
            out.setdefault(mode, {})[dname] = {
                "compared": len(done), "agree": sum(r["agree"] for _, r in done),
                "bitwise": sum(r["bitwise"] for _, r in done),
                **{f"known_{k}": explained[k] for k in KNOWN},
                "differ": [w["id"] for w, r in done if not r["agree"] and not r.get("explained")],
                "unavailable": sorted({r["unavailable"] for _, r in rows if "unavailable" in r})}
    return out


def _flag(r):
    return ("n/a" if "unavailable" in r else "=" if r["bitwise"] else "~" if r["agree"]
            else r.get("explained") or "X")


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
            sources.append(dict(name=name, commit=commit, **stats))
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
        flag = " ".join(f"{m}/{d[5:]}:{_flag(r)}"
                        for m, rs in row["results"].items() for d, r in rs.items())
        print(f"[{i:3d}] {row['optimizer']:8s} x{len(configs):<3d} {flag}  {configs[0]}",
              flush=True)

    entries = [e for cfg, _ in distinct.values()
               for e in ((cfg.get("paramwise_cfg") or {}).get("custom_keys") or {}).values()]
    entry_keys = Counter(k for e in entries for k in e)
    summary = {"command": "python scripts/real_configs.py " + " ".join(
                   a if "=" not in a else a.split("=")[0] + "=..." for a in (argv or sys.argv[1:])),
               "versions": versions(mm_how), "sources": sources, "steps": args.steps,
               "distinct_wrappers": len(distinct), "compared": len(wrappers),
               "not_compared": dict(outside.most_common()),
               "custom_keys_entries": len(entries),
               "custom_keys_entry_keys": dict(entry_keys.most_common()),
               "known_differences": KNOWN,
               "results": summarise([w for w in wrappers
                                     if w["optimizer"] not in MMPRETRAIN_OPTIMIZERS], modes),
               "results_mmpretrain_optimizers": summarise(
                   [w for w in wrappers if w["optimizer"] in MMPRETRAIN_OPTIMIZERS], modes),
               "wrappers": wrappers}
    print(json.dumps({k: summary[k] for k in ("distinct_wrappers", "compared", "not_compared",
                                               "results", "results_mmpretrain_optimizers")},
                     indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=repr)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
