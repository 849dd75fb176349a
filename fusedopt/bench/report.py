"""What a run reports: the JSON document, the table (rich if installed, plain otherwise) and the
sweep progress bar (rich, else tqdm, else plain lines). rich and tqdm are imported lazily, only
here, and only when printing: ``import fusedopt`` never loads them."""
import os
import platform
import re
import subprocess
import sys

import torch

from fusedopt.bench import measure

BASELINE = "torch-fused"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device, stream, stream_ms):
    """The device record, with the stream (copy bandwidth) measured in this run."""
    med = measure.quantile(stream_ms, 0.5) if stream_ms else None
    info = {"type": device.type}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(name=prop.name, capability=f"{prop.major}.{prop.minor}",
                    memory_bytes=prop.total_memory, multiprocessors=prop.multi_processor_count)
    else:
        info.update(name=cpu_name(), cores=os.cpu_count() or 1, threads=torch.get_num_threads(),
                    cpu_capability=torch.backends.cpu.get_cpu_capability())
    if hasattr(os, "getloadavg"):   # a shared machine: how busy it was, to judge the figures
        info["loadavg_1min_end"] = os.getloadavg()[0]
    best = min(stream_ms) if stream_ms else None
    info.update(slug=device_slug(device), copy_ms=med,
                copy_gbps=stream.bytes / (med * 1e-3) / 1e9 if med else None,
                copy_gbps_best=stream.bytes / (best * 1e-3) / 1e9 if best else None,
                copy_method=stream.method)
    return info


def device_slug(device):
    if device.type == "cuda":
        return "cuda-" + _slug(torch.cuda.get_device_name(device))
    return f"cpu-{_slug(cpu_name())}-{os.cpu_count() or 1}c"


def _slug(text):
    text = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40] or "unknown"


def git_info():
    """Revision of the checkout fusedopt was imported from (None outside a git checkout).
    FUSEDOPT_GIT_COMMIT names it where the tree was copied without its history (a GPU lease
    receives the working tree, whose .git may be stale)."""
    if os.environ.get("FUSEDOPT_GIT_COMMIT"):
        commit = os.environ["FUSEDOPT_GIT_COMMIT"]
        return {"commit": commit, "dirty": False, "describe": commit[:12]}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        if not commit:
            return None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit, "dirty": dirty, "describe": git("describe", "--always", "--dirty")}
    except (OSError, subprocess.SubprocessError):
        return None


def torch_info():
    import fusedopt
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "num_threads": torch.get_num_threads(), "fusedopt": fusedopt.__version__,
            "fusedopt_backends": fusedopt.available_backends(), "python": platform.python_version()}


def records(entries, *, bytes_per_step, copy_gbps, copy_gbps_best=None, extra=None,
            bytes_of=None):
    """One JSON record per implementation (skipped ones included, with their reason).
    ``bytes_of``: {impl: bytes per step} for implementations that move other bytes than
    ``bytes_per_step`` (master weights); each record says what its GB/s counts.

    The headline figures use medians; ``roofline_frac`` (the table's "vs stream") is ``gbps``
    over the stream's median ``copy_gbps``. ``min_ms``, ``gbps_best`` and ``roofline_frac_best``
    (best step vs best stream pass) are the same figures from the fastest samples: on a shared
    machine, load only ever adds time."""
    out = []
    for e in entries:
        moved = (bytes_of or {}).get(e.impl, bytes_per_step)
        rec = {"impl": e.impl, "status": e.status, "reason": e.reason, "backend": e.backend,
               "bytes_per_step": moved,
               "median_ms": None, "p20_ms": None, "p80_ms": None, "gbps": None,
               "roofline_frac": None, "vs_torch_fused": None, "launches_per_step": e.launches,
               "host_overhead_us": measure.quantile(e.host, 0.5), "peak_mem_bytes": e.peak_mem,
               "samples": len(e.times)}
        if e.status == "ok" and e.times:
            med = measure.quantile(e.times, 0.5)
            rec.update(median_ms=med, p20_ms=measure.quantile(e.times, 0.2),
                       p80_ms=measure.quantile(e.times, 0.8),
                       gbps=moved / (med * 1e-3) / 1e9)
            if copy_gbps:
                rec["roofline_frac"] = rec["gbps"] / copy_gbps
            rec["min_ms"] = min(e.times)
            rec["gbps_best"] = moved / (rec["min_ms"] * 1e-3) / 1e9
            if copy_gbps_best:
                rec["roofline_frac_best"] = rec["gbps_best"] / copy_gbps_best
        rec.update(extra or {})
        out.append(rec)
    base = {r.get("sweep_value"): r["median_ms"] for r in out
            if r["impl"] == BASELINE and r["median_ms"]}
    for r in out:
        ref = base.get(r.get("sweep_value"))
        if ref and r["median_ms"]:
            r["vs_torch_fused"] = ref / r["median_ms"]
    return out


# ---- display ----------------------------------------------------------------------------------
def _fmt(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def _impl_label(r):
    """The implementation, with the backend ``auto`` picked (``fusedopt (cpu)``)."""
    backend = r.get("backend")
    return f"{r['impl']} ({backend})" if backend and not r["impl"].endswith(backend) else r["impl"]


def _mib(r):
    return None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20


def _percent(frac):
    return None if frac is None else 100 * frac


# (header, cell of an ok record); "vs stream" is the JSON's roofline_frac (the name kept for the
# readers of committed results), explained under the table
COLUMNS = [
    ("impl", _impl_label),
    ("median ms", lambda r: _fmt(r["median_ms"], ".3f")),
    ("p20-p80 ms", lambda r: f"{r['p20_ms']:.3f}-{r['p80_ms']:.3f}"),
    ("GB/s", lambda r: _fmt(r["gbps"], ".1f")),
    ("vs stream", lambda r: _fmt(_percent(r["roofline_frac"]), ".0f", "%")),
    ("vs torch-fused", lambda r: _fmt(r["vs_torch_fused"], ".2f", "x")),
    ("launches", lambda r: _fmt(r["launches_per_step"], "d")),
    ("host us", lambda r: _fmt(r["host_overhead_us"], ".0f")),
    ("peak MiB", lambda r: _fmt(_mib(r), ".1f")),
]


def table(results):
    """(header, rows) of the implementations that ran, without the columns that have no value
    in any row (launches on CPU: the profiler counts device launches only)."""
    ok = [r for r in results if r["status"] == "ok"]
    cells = [[cell(r) for _, cell in COLUMNS] for r in ok]
    keep = [i for i in range(len(COLUMNS))
            if i == 0 or any(row[i] not in ("-", "") for row in cells)]
    return [COLUMNS[i][0] for i in keep], [[row[i] for i in keep] for row in cells]


def notes(results, copy_gbps):
    """The lines under a table: what the ratios compare with, then what did not run."""
    header, _ = table(results)
    lines = []
    if "vs stream" in header and copy_gbps:
        lines.append(f"vs stream: GB/s / {copy_gbps:.1f} GB/s of torch's in-place add_ timed "
                     "alongside; a reference, not a ceiling")
    if "vs torch-fused" in header:
        lines.append("vs torch-fused: torch-fused's median / this median (above 1x: faster)")
    for status, word in (("skipped", "skipped"), ("error", "failed")):
        rs = [r for r in results if r["status"] == status]
        if rs:
            lines.append(f"{word}: " + "; ".join(f"{r['impl']} ({r['reason']})" for r in rs))
    return lines


def print_table(title, results, out=None, copy_gbps=None):
    out = out or sys.stdout
    header, rows = table(results)
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
    for line in notes(results, copy_gbps):
        print(line, file=out)


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
