"""What a run reports: the JSON document, the table (rich if installed, plain otherwise) and the
sweep progress bar (rich, else tqdm, else plain lines). rich and tqdm are imported lazily, only
here, and only when printing: ``import fusedopt`` never loads them."""
import os
import platform
import re
import subprocess
import sys

import torch

from fusedopt.bench import check as _check
from fusedopt.bench import measure

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def describe_device(device):
    """The device: its name, its cores/threads or GPU properties, its slug; the 1-min load
    average (a shared machine: how busy it was, to judge the figures)."""
    info = {"type": device.type}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(name=prop.name, capability=f"{prop.major}.{prop.minor}",
                    memory_bytes=prop.total_memory, multiprocessors=prop.multi_processor_count)
    else:
        info.update(name=cpu_name(), cores=os.cpu_count() or 1, threads=torch.get_num_threads(),
                    cpu_capability=torch.backends.cpu.get_cpu_capability(),
                    fusedopt_cpu_level=_fusedopt_cpu_level())
    if hasattr(os, "getloadavg"):
        info["loadavg_1min_end"] = os.getloadavg()[0]
    info["slug"] = device_slug(device)
    return info


def _fusedopt_cpu_level():
    """The level fusedopt's CPU kernels run at (avx512, avx2, scalar; FUSEDOPT_CPU_CAPABILITY caps
    it), None without the extension."""
    from fusedopt import _ext
    return _ext.C.cpu_capability() if _ext.C is not None else None


def device_info(device, references):
    """The device record with the bandwidth references measured in this run: ``references``
    maps a measure.Reference to its times (ms). The add_ stream keeps the fields the committed
    results use (``copy_gbps``: its median); the real copy_ is ``real_copy_gbps``."""
    info = describe_device(device)
    for ref, times in references.items():
        info.update(ref.summary(times))
    return info


def device_slug(device):
    if device.type == "cuda":
        return "cuda-" + _slug(torch.cuda.get_device_name(device))
    return f"cpu-{_slug(cpu_name())}-{os.cpu_count() or 1}c"


def _slug(text):
    text = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40] or "unknown"


# Paths a run writes (results, not sources): their presence does not make a tree dirty.
_OUTPUTS = ("bench/results/", "fusedopt-bench-results/", "gpu_check_out/")


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(root, *args):
    """(return code, stdout) of a git command in ``root``; (None, '') when git cannot run."""
    try:
        res = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None, ""
    return res.returncode, res.stdout.strip()


def git_info(root=None):
    """The revision of the checkout fusedopt was imported from, and whether the tree differs
    from it: ``commit``, ``dirty`` (True/False, None where git cannot tell), ``changes`` (up to
    20 differing paths: tracked edits and untracked, unignored files, outputs of runs left
    out), ``describe``. None outside a git checkout when FUSEDOPT_GIT_COMMIT is unset.

    FUSEDOPT_GIT_COMMIT names the revision where the tree was copied without its history (a
    GPU lease gets the working tree; its .git may be stale or missing): the tree is then compared
    with that commit where the commit is known here, and ``dirty`` is None where it is not.
    Never False without looking: a run once named a revision its tree was not at."""
    root = root or _repo_root()
    named = os.environ.get("FUSEDOPT_GIT_COMMIT") or None
    rc, head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    in_repo = rc == 0 and bool(head)
    if not in_repo and not named:
        return None
    commit = named or head
    dirty, changes = None, []
    rc, full = _git(root, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}") if in_repo \
        else (None, "")
    if rc == 0 and full:
        commit = full
        # tracked files against the commit (the index is not trusted: a copied tree's is stale)
        rc_d, diff = _git(root, "diff", "--name-only", commit, "--")
        rc_u, untracked = _git(root, "ls-files", "--others", "--exclude-standard")
        if rc_d == 0 and rc_u == 0:
            changes = [f for f in diff.splitlines() + untracked.splitlines()
                       if f and not f.startswith(_OUTPUTS)]
            dirty = bool(changes)
    describe = commit[:12] + ("-dirty" if dirty else "" if dirty is False else "-unknown")
    return {"commit": commit, "dirty": dirty, "changes": changes[:20],
            "describe": describe, "named_by": "FUSEDOPT_GIT_COMMIT" if named else "git"}


def provenance(device=None):
    """What every result file carries (bench/*.py, fusedopt-bench): the device, the revision
    and the versions. ``device``: a torch.device (default: cuda if available, else cpu)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    return {"device": describe_device(device), "git": git_info(), "torch": torch_info()}


def torch_info():
    import fusedopt
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "num_threads": torch.get_num_threads(), "fusedopt": fusedopt.__version__,
            "fusedopt_backends": fusedopt.available_backends(), "python": platform.python_version()}


TORCH_IMPLS = ("torch-forloop", "torch-foreach", "torch-fused")


def records(entries, *, bytes_per_step, references=None, extra=None, bytes_of=None,
            checks=None):
    """One JSON record per implementation (skipped ones included, with their reason).
    ``bytes_of``: {impl: bytes per step} for implementations that move other bytes than
    ``bytes_per_step`` (master weights); each record says what its GB/s counts. ``references``:
    this point's bandwidth references, {measure.Reference: pass times in ms}. ``checks``: {impl:
    check record} (check.check_all), kept as each record's ``check``.

    The headline figures use medians; ``roofline_frac`` (the table's "vs stream") is ``gbps``
    over the add_ stream's median ``copy_gbps``, ``real_copy_frac`` ("vs copy_") over the
    real copy's. ``min_ms``, ``gbps_best`` and ``roofline_frac_best`` (best step vs best stream
    pass) are the same figures from the fastest samples: on a shared machine, load only ever
    adds time. ``vs_baseline`` is the median of ``baseline``, the fastest torch implementation
    whose check passed (Note [checked baselines]), over this one's; ``vs_torch_fused`` the same
    against torch-fused, given only where torch-fused's check passed."""
    refs = {}
    for ref, times in (references or {}).items():
        refs.update(ref.summary(times))
    copy, copy_best, real = (refs.get("copy_gbps"), refs.get("copy_gbps_best"),
                             refs.get("real_copy_gbps"))
    out = []
    for e in entries:
        moved = (bytes_of or {}).get(e.impl, bytes_per_step)
        rec = {"impl": e.impl, "status": e.status, "reason": e.reason, "backend": e.backend,
               "bytes_per_step": moved, "check": (checks or {}).get(e.impl),
               "median_ms": None, "p20_ms": None, "p80_ms": None, "gbps": None,
               "roofline_frac": None, "real_copy_frac": None, "vs_baseline": None,
               "baseline": None, "vs_torch_fused": None, "launches_per_step": e.launches,
               "host_overhead_us": measure.quantile(e.host, 0.5), "peak_mem_bytes": e.peak_mem,
               "samples": len(e.times)}
        if e.cpu:        # the host preset: process CPU time beside the wall time
            rec["cpu_ms"] = measure.quantile(e.cpu, 0.5)
        if e.status == "ok" and e.times:
            med = measure.quantile(e.times, 0.5)
            rec.update(median_ms=med, p20_ms=measure.quantile(e.times, 0.2),
                       p80_ms=measure.quantile(e.times, 0.8),
                       gbps=moved / (med * 1e-3) / 1e9)
            if copy:
                rec["roofline_frac"] = rec["gbps"] / copy
            if real:
                rec["real_copy_frac"] = rec["gbps"] / real
            rec["min_ms"] = min(e.times)
            rec["gbps_best"] = moved / (rec["min_ms"] * 1e-3) / 1e9
            if copy_best:
                rec["roofline_frac_best"] = rec["gbps_best"] / copy_best
        rec.update({k: v for k, v in refs.items() if k in ("copy_gbps", "copy_gbps_best",
                                                           "real_copy_gbps")})
        rec.update(extra or {})
        out.append(rec)
    correct = [r for r in out if r["impl"] in TORCH_IMPLS and r["median_ms"] and checked_ok(r)]
    base = min(correct, key=lambda r: r["median_ms"], default=None)
    fused = next((r for r in correct if r["impl"] == "torch-fused"), None)
    for r in out:
        if r["median_ms"] and base:
            r.update(baseline=base["impl"], vs_baseline=base["median_ms"] / r["median_ms"])
        if r["median_ms"] and fused:
            r["vs_torch_fused"] = fused["median_ms"] / r["median_ms"]
    return out


def checked_ok(rec):
    """Whether a record's implementation passed its check (Note [checked baselines])."""
    return (rec.get("check") or {}).get("verdict") in ("ok", "oracle")


def wrong(rec):
    return (rec.get("check") or {}).get("verdict") == "wrong"


# ---- display ----------------------------------------------------------------------------------
def _fmt(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def _impl_label(r):
    """The implementation, with the backend ``auto`` picked (``fusedopt (cpu)``), marked WRONG
    where its check failed and "unchecked" where the check could not run."""
    backend = r.get("backend")
    label = f"{r['impl']} ({backend})" if backend and not r["impl"].endswith(backend) else r["impl"]
    verdict = (r.get("check") or {}).get("verdict")
    return label + {"wrong": " WRONG", "error": " unchecked"}.get(verdict, "")


def baseline_of(r):
    """(baseline name, this record's speed ratio to it); records written before the check
    existed compared with torch-fused."""
    if "baseline" in r:
        return r["baseline"], r["vs_baseline"]
    return "torch-fused", r.get("vs_torch_fused")


def _mib(r):
    return None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20


def _percent(frac):
    return None if frac is None else 100 * frac


# (header, cell of an ok record); "vs stream" is the JSON's roofline_frac (the name kept for the
# readers of committed results), explained under the table, with the real copy_'s figure (the
# table stays within 100 columns); "vs BASELINE" names the baseline
COLUMNS = [
    ("impl", _impl_label),
    ("median ms", lambda r: _fmt(r["median_ms"], ".3f")),
    ("p20-p80 ms", lambda r: f"{r['p20_ms']:.3f}-{r['p80_ms']:.3f}"),
    ("GB/s", lambda r: _fmt(r["gbps"], ".1f")),
    ("vs stream", lambda r: _fmt(_percent(r["roofline_frac"]), ".0f", "%")),
    ("vs BASELINE", lambda r: _fmt(baseline_of(r)[1], ".2f", "x")),
    ("launches", lambda r: _fmt(r["launches_per_step"], "d")),
    ("host us", lambda r: _fmt(r["host_overhead_us"], ".0f")),
    ("peak MiB", lambda r: _fmt(_mib(r), ".1f")),
]


def _point_baseline(results):
    return next((baseline_of(r)[0] for r in results if baseline_of(r)[1]), None)


def table(results):
    """(header, rows) of the implementations that ran, without the columns that have no value
    in any row (launches on CPU: the profiler counts device launches only)."""
    ok = [r for r in results if r["status"] == "ok"]
    cells = [[cell(r) for _, cell in COLUMNS] for r in ok]
    keep = [i for i in range(len(COLUMNS))
            if i == 0 or any(row[i] not in ("-", "") for row in cells)]
    names = [COLUMNS[i][0].replace("BASELINE", _point_baseline(results) or "-") for i in keep]
    return names, [[row[i] for i in keep] for row in cells]


def notes(results, copy_gbps, real_copy_gbps=None):
    """The lines under a table: what the ratios compare with, what the check found, then what
    did not run."""
    header, _ = table(results)
    lines = []
    if "vs stream" in header and copy_gbps:
        lines.append(f"vs stream: GB/s / {copy_gbps:.1f} GB/s of torch's in-place add_ timed "
                     "alongside; a reference, not a ceiling")
    if real_copy_gbps and any(r.get("real_copy_frac") for r in results):
        best = max(r["real_copy_frac"] for r in results if r.get("real_copy_frac"))
        lines.append(f"copy_: {real_copy_gbps:.1f} GB/s timed alongside (torch's copy_, "
                     f"8 B/element); the best row reaches {100 * best:.0f}% of it "
                     "(JSON: real_copy_frac)")
    base = _point_baseline(results)
    if base:
        how = ("the fastest torch implementation whose check passed" if any(
            "baseline" in r for r in results) else "torch's fused implementation")
        lines.append(f"vs {base}: {base}'s median / this median ({how}; above 1x: faster)")
    checks = [r["check"] for r in results if r.get("check")]
    if checks:
        c = next((c for c in checks if "bound_ulps" in c), None)
        if c:
            lines.append(f"checked: {c['steps']} steps of each beside {c['against'].split('+')[0]}"
                         f" on {c['numel']:,} params before timing, within {c['bound_ulps']:g} "
                         "ulps of the dtype")
        for r in results:
            verdict = (r.get("check") or {}).get("verdict")
            if verdict == "wrong":
                lines.append(f"WRONG: {r['impl']}: {_check.describe(r['check'])}; never the "
                             "baseline")
            elif verdict == "error":
                lines.append(f"unchecked: {r['impl']}: {_check.describe(r['check'])}")
    for status, word in (("skipped", "skipped"), ("error", "failed")):
        rs = [r for r in results if r["status"] == status]
        if rs:
            lines.append(f"{word}: " + "; ".join(f"{r['impl']} ({r['reason']})" for r in rs))
    return lines


def print_table(title, results, out=None, copy_gbps=None, real_copy_gbps=None):
    out = out or sys.stdout
    header, rows = table(results)
    _print_rows(title, header, rows, out)
    for line in notes(results, copy_gbps, real_copy_gbps):
        print(line, file=out)


def _print_rows(title, header, rows, out):
    """A table: rich if installed, else plain columns."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None and rows:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  collapse_padding=True)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            t.add_row(*row)
        Console(file=out, width=_term_width(), soft_wrap=True).print(t)
    else:
        widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
        print(title, file=out)
        for row in [header] + rows:
            print("  ".join(c.rjust(w) if i else c.ljust(w)
                            for i, (c, w) in enumerate(zip(row, widths))).rstrip(), file=out)


# ---- the host preset ---------------------------------------------------------------------------
def host_figures(results):
    """Per record of the host preset: ``host_us`` (median step, wall), ``cpu_us`` (median
    process CPU time, Note [CPU time on a shared host]), ``ns_per_tensor`` and
    ``ns_per_tensor_cpu`` (the cost of each tensor above one: (t(N) - t(1)) / (N - 1), what
    grows with the model) and ``ns_per_tensor_avg`` (t(N) / N, fixed cost included)."""
    for key, us_key, per_key in (("median_ms", "host_us", "ns_per_tensor"),
                                 ("cpu_ms", "cpu_us", "ns_per_tensor_cpu")):
        one = {r["impl"]: r.get(key) for r in results if r.get("sweep_value") == 1}
        for r in results:
            n, ms = r.get("sweep_value"), r.get(key)
            r[us_key] = ms * 1e3 if ms else None
            r[per_key] = ((ms - one[r["impl"]]) * 1e6 / (n - 1)
                          if ms and n > 1 and one.get(r["impl"]) else None)
    for r in results:
        ms = r["median_ms"]
        r["ns_per_tensor_avg"] = ms * 1e6 / r["sweep_value"] if ms else None


def print_host_table(results, out=None):
    """The host preset: one row per tensor count N, µs per step and ns per tensor of each
    implementation."""
    out = out or sys.stdout
    impls = list(dict.fromkeys(r["impl"] for r in results if r["status"] == "ok"))
    header = ["N"] + [h for i in impls for h in (f"{_impl_label(_first(results, i))} µs",
                                                  "cpu µs", "ns/t")]

    def us(v):
        return _fmt(v, ".0f" if (v or 0) >= 100 else ".1f")
    rows = []
    for n in sorted({r["sweep_value"] for r in results}):
        by = {r["impl"]: r for r in results if r["sweep_value"] == n}
        rows.append([str(n)] + [c for i in impls for c in (
            us(by[i].get("host_us")), us(by[i].get("cpu_us")),
            _fmt(by[i].get("ns_per_tensor_cpu"), ".0f"))])
    _print_rows("host time of a step (64-element tensors, one group each)", header, rows, out)
    print("µs: median step, wall clock; cpu µs: median process CPU time (all threads; on a "
          "loaded machine a long step is preempted and only its wall time grows); ns/t: "
          "(cpu(N) - cpu(1)) / (N - 1), the cost of each tensor above one", file=out)
    for line in notes(results, None):
        if not line.startswith("vs "):
            print(line, file=out)


def _first(results, impl):
    return next(r for r in results if r["impl"] == impl)


def _term_width():
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


class Progress:
    """A progress bar over sweep points: rich, else tqdm, else one line per point on stderr."""

    def __init__(self, total, label):
        self.total, self.label, self.done = total, label, 0
        self._rich = self._tqdm = None
        try:
            from rich.progress import Progress as RichProgress
            self._rich = RichProgress(transient=False, console=None)
            self._rich.start()
            self._task = self._rich.add_task(label, total=total)
            return
        except ImportError:
            pass
        try:
            from tqdm import tqdm
            self._tqdm = tqdm(total=total, desc=label, file=sys.stderr)
        except ImportError:
            pass

    def advance(self, what):
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, advance=1, description=f"{self.label} {what}")
        elif self._tqdm is not None:
            self._tqdm.set_postfix_str(str(what))
            self._tqdm.update(1)
        else:
            print(f"[{self.done}/{self.total}] {self.label} {what}", file=sys.stderr, flush=True)

    def close(self):
        if self._rich is not None:
            self._rich.stop()
        elif self._tqdm is not None:
            self._tqdm.close()
