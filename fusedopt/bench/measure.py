"""Parameter sets, the bandwidth stream ("vs stream"), and the interleaved timing of one point.

Timing (Note [interleaved timing]): every implementation steps the same parameter tensors with the
same grads. Each round times one step of every implementation and one pass of the bandwidth
stream, in an order rotated by one each round, so slow drifts of a shared machine (another
process, frequency, thermal) fall on all of them alike. CPU steps are timed with
``time.perf_counter_ns``; CUDA steps with CUDA events around the step, the device synchronised
before it, so a step's time includes any host launch time the device waited for.
"""
import contextlib
import gc
import math
import os
import time

import torch

from fusedopt import _engine, _precision
from fusedopt.bench import impls as _impls

# Note [bandwidth references]: two of torch's element-wise ops over fp32 vectors, timed in the same
# rounds as the steps (one pass of each per round), give the step's GB/s its yardsticks:
# - the stream, in-place a.add_(b, alpha=...): reads a and b and writes a, 12 B per element with no
#   write-allocate traffic owed (the definition issue 2 uses, on 20M floats on CPU); the "vs stream"
#   column and the JSON's copy_gbps / roofline_frac (names kept for the committed results);
# - a real copy, dst.copy_(src): reads src, writes dst, 8 B per element (STREAM's "copy"
#   convention: the write-allocate read a CPU may add is not counted); "vs copy_", real_copy_gbps.
# Neither is a ceiling: a step may beat them. Both are given with their p20-p80 spread: on the
# H200 the add_ reference moved by 4% between runs of unchanged kernels (issue 28), enough to flip
# a 90%-of-copy target, so a ratio is only as firm as its reference's spread.
STREAM_BYTES_PER_ELEM = 12
COPY_BYTES_PER_ELEM = 8
CPU_STREAM_NUMEL = 20_000_000
CUDA_STREAM_NUMEL = 1 << 28

def bytes_per_param(optimizer, dtype, *, clip=False, amp=False, mode=""):
    """Bytes one step must move per parameter (bench/README.md, "Effective bandwidth"): the
    algorithm's own count (``Algorithm.bytes_per_param`` at the bench's flags: Adam/AdamW read
    p, g, m, v and write p, m, v, fp32 28 B; SGD with momentum 20; a two-stage algorithm's
    second reads added). A clip norm or AMP's found_inf check needs one more read of every grad
    before the update (fp32 AdamW + clip: 32 B), and both share that read. ``master``: fp16/bf16
    params with fp32 master copies read the master (4 B) instead of the param and write both,
    and keep fp32 states (Note [master copy]): bf16 AdamW 14 -> 28 B; a no-op for fp32.
    ``mode``: a precision mode of ``_impls.MODES`` (Note [precision modes])."""
    algo, flags = _impls.flags_of(optimizer)
    weights, states, _ = _precision.mode(_impls.MODES.get(mode, {}), dtype)
    size = torch.empty((), dtype=dtype).element_size()
    return (algo.bytes_per_param(dtype, flags, master=weights == _engine.MASTER,
                                 state_dtype=states, kahan=weights == _engine.KAHAN)
            + (size if clip or amp else 0))


def synthetic_shapes(numel, tensors):
    """``numel`` elements in ``tensors`` 1-D tensors of (nearly) equal size."""
    base, extra = divmod(numel, tensors)
    return [(base + (1 if i < extra else 0),) for i in range(tensors)]


def group_count(groups, tensors):
    return tensors if groups == "per-param" else int(groups)


def param_groups(params, groups, lr):
    """``params`` split into contiguous groups, each with its own lr (lr .. lr/2), as a paramwise
    config produces: groups=1, 'per-param' or N."""
    n = group_count(groups, len(params))
    out = []
    for i in range(n):
        chunk = params[i * len(params) // n:(i + 1) * len(params) // n]
        out.append({"params": chunk, "lr": lr * (1.0 - 0.5 * i / max(n - 1, 1))})
    return out


def make_params(shapes, dtype, device, *, grad_scale=1.0, seed=0):
    """Leaf params (~N(0, 0.02)) with grads (~N(0, 1e-3) times the AMP loss scale)."""
    torch.manual_seed(seed)
    params = []
    for shape in shapes:
        p = (torch.randn(shape, device=device) * 0.02).to(dtype).requires_grad_()
        p.grad = (torch.randn(shape, device=device) * (1e-3 * grad_scale)).to(dtype)
        params.append(p)
    return params


def _reference_numel(device):
    numel = CPU_STREAM_NUMEL if device.type == "cpu" else CUDA_STREAM_NUMEL
    if device.type == "cuda":     # both references' vectors (4 of them) in a quarter of free memory
        free, _ = torch.cuda.mem_get_info(device)
        while numel > (1 << 22) and 16 * numel > free // 4:
            numel //= 2
    return numel


class Reference:
    """One bandwidth reference of Note [bandwidth references]; ``prefix`` names its JSON fields."""

    def __init__(self, device, *, numel, bytes_per_elem, prefix, method):
        self.numel, self.prefix, self.method = numel, prefix, method
        self.a = torch.ones(numel, device=device)
        self.b = torch.ones(numel, device=device)
        self.bytes = bytes_per_elem * numel

    def gbps(self, ms):
        return self.bytes / (ms * 1e-3) / 1e9 if ms else None

    def summary(self, times):
        """{<prefix>_gbps (median), _best, _p20, _p80 (GB/s at the p80 and p20 times), _ms,
        _method} of the pass times ``times`` (ms)."""
        p = self.prefix
        if not times:
            return {f"{p}_gbps": None, f"{p}_method": self.method}
        return {f"{p}_ms": quantile(times, 0.5), f"{p}_gbps": self.gbps(quantile(times, 0.5)),
                f"{p}_gbps_best": self.gbps(min(times)),
                f"{p}_gbps_p20": self.gbps(quantile(times, 0.8)),
                f"{p}_gbps_p80": self.gbps(quantile(times, 0.2)), f"{p}_method": self.method}


class Stream(Reference):
    """The stream: ``a.add_(b, alpha=1e-7)`` over fp32 vectors, 12 B/element."""

    def __init__(self, device, numel=None):
        numel = numel or _reference_numel(device)
        super().__init__(device, numel=numel, bytes_per_elem=STREAM_BYTES_PER_ELEM, prefix="copy",
                         method=f"in-place a.add_(b, alpha=...) on {numel} fp32 elements, "
                                f"{STREAM_BYTES_PER_ELEM} B/element")

    def __call__(self):
        self.a.add_(self.b, alpha=1e-7)


class Copy(Reference):
    """A real copy: ``a.copy_(b)`` over fp32 vectors, 8 B/element."""

    def __init__(self, device, numel=None):
        numel = numel or _reference_numel(device)
        super().__init__(device, numel=numel, bytes_per_elem=COPY_BYTES_PER_ELEM,
                         prefix="real_copy",
                         method=f"a.copy_(b) on {numel} fp32 elements, {COPY_BYTES_PER_ELEM} "
                                "B/element")

    def __call__(self):
        self.a.copy_(self.b)


class Timer:
    """Milliseconds of one call: perf_counter on CPU, CUDA events (device synced before) on CUDA."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn):
        if not self.cuda:
            t0 = time.perf_counter_ns()
            fn()
            return (time.perf_counter_ns() - t0) / 1e6
        torch.cuda.synchronize()
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)

    def host_us(self, fn):
        """Host wall time of the call alone (no device sync inside the timed span)."""
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        fn()
        t = (time.perf_counter_ns() - t0) / 1e3
        if self.cuda:
            torch.cuda.synchronize()
        return t

    def host_and_cpu_ms(self, fn):
        """(host wall ms, process CPU ms) of the call alone. Note [CPU time on a shared host]:
        a step longer than the scheduler's time slice is preempted on a loaded machine and its
        wall time grows with the load, not with its work: at load 11 on 2 cores the cpu
        backend's 5000-group step took 28 ms of wall time and 4.0 ms of CPU time (1000 groups:
        0.85 and 0.85 ms). The process's CPU time counts every thread, spinning OpenMP workers
        too: with OMP_NUM_THREADS=1 it is the step's own work."""
        if self.cuda:
            torch.cuda.synchronize()
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        fn()
        t, c = time.perf_counter_ns() - t0, time.process_time_ns() - c0
        if self.cuda:
            torch.cuda.synchronize()
        return t / 1e6, c / 1e6


def per_call_s(fn, n, device=None):
    """Seconds per call over ``n`` back-to-back calls of ``fn`` (on CUDA the device synchronised
    before and after): for calls too short to time one by one (bench/hparams.py,
    bench/scheduler_step.py)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else None
    if sync:
        sync()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    if sync:
        sync()
    return (time.perf_counter_ns() - t0) / 1e9 / n


def quantile(values, q):
    v = sorted(values)
    if not v:
        return None
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs start/stop lines on fd 2; keep them out of the table."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def profile_step(fn, device, *, memory):
    """(peak bytes allocated on ``device`` during ``fn``, device ops launched by ``fn``).

    Peak: the running sum of the profiler's allocation events (state created by a first step
    included); None if the profiler gave none. Launches: CUDA kernels, memcpys and memsets; None
    on CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _quiet_stderr(), profile(activities=activities, profile_memory=memory) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.profiler.kineto_results.events()
    want = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    peak = None
    if memory:
        mem = sorted((e for e in events if e.name() == "[memory]" and e.device_type() == want),
                     key=lambda e: e.start_ns())
        total = peak = 0
        for e in mem:
            total += e.nbytes()
            peak = max(peak, total)
        peak = peak if mem else None
    launches = None
    if device.type == "cuda":
        launches = sum(1 for e in events if e.device_type() == DeviceType.CUDA
                       and e.name() != "[memory]")
    return peak, launches


class Entry:
    """One implementation at one benchmark point."""

    def __init__(self, impl):
        self.impl, self.status, self.reason = impl, "ok", None
        self.opt = self.step = self.backend = None
        self.times, self.host, self.cpu = [], [], []
        self.peak_mem = self.launches = None

    def fail(self, exc):
        lines = str(exc).strip().splitlines()
        self.status = "error"
        self.reason = f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
        self.opt = self.step = None


def _build(entries, optimizer, groups, params, *, clip, amp, device, profile_first):
    for e in entries:
        try:
            # fresh dicts: torch's add_param_group writes its defaults into the dict it gets
            fresh = [dict(g, params=list(g["params"])) for g in groups]
            e.opt = _impls.build(e.impl, optimizer, fresh, device)
            e.step = _impls.make_step(e.impl, e.opt, params, clip=clip, amp=amp, device=device)
            if profile_first:   # the first step creates the state: its peak includes it
                e.peak_mem, _ = profile_step(e.step, device, memory=True)
            else:
                e.step()
            e.backend = _impls.backend_of(e.impl, e.opt)
        except Exception as exc:   # an implementation that cannot run this point is reported
            e.fail(exc)


def _rounds(entries, rounds, warmup, run_one, extra=()):
    """Interleaved rounds; ``run_one(entry) -> float`` appended to ``sink`` after warmup;
    ``extra``: more slots (the bandwidth references) timed in every round."""
    slots = [e for e in entries if e.status == "ok"] + list(extra)
    n = len(slots)
    for r in range(warmup + rounds):
        for k in range(n):
            slot = slots[(k + r) % n]
            if getattr(slot, "status", "ok") != "ok":
                continue
            try:
                value = run_one(slot)
            except Exception as exc:
                slot.fail(exc)
                continue
            if r >= warmup:
                slot.sink.append(value)


class _ReferenceSlot:
    def __init__(self, reference):
        self.reference, self.sink = reference, []


def run_point(impl_names, *, optimizer, shapes, groups, dtype, clip, amp, steps, warmup, device,
              references=(), host=False):
    """Time every implementation on one parameter set, in rounds with one pass of each bandwidth
    reference. Returns (entries, {reference: its pass times in ms}). ``host``: time the host
    side only (Timer.host_and_cpu_ms: wall and CPU time; the host preset), without peak memory, launches or the twin set
    of Note [host overhead]."""
    reasons = {i: _impls.unavailable_reason(i, optimizer, device) for i in impl_names}
    entries = [Entry(i) for i in impl_names]
    for e in entries:
        if reasons[e.impl] is not None:
            e.status, e.reason = "skipped", reasons[e.impl]
    live = [e for e in entries if e.status == "ok"]
    lr = _impls.hyper(optimizer)["lr"]
    grad_scale = 2.0 ** 16 if amp else 1.0     # GradScaler's initial scale
    params = make_params(shapes, dtype, device, grad_scale=grad_scale)
    restore = None
    if clip or amp:   # torch's recipes rescale grads in place: give every step the same grads
        master = [p.grad.clone() for p in params]
        grads = [p.grad for p in params]

        def restore():
            torch._foreach_copy_(grads, master)
    _build(live, optimizer, param_groups(params, groups, lr), params, clip=clip, amp=amp,
           device=device, profile_first=not host)
    timer = Timer(device)
    slots = [_ReferenceSlot(r) for r in references]
    time_step = timer.host_and_cpu_ms if host else timer

    def run_one(x):
        if isinstance(x, _ReferenceSlot):
            return timer(x.reference)
        if restore is not None:
            restore()
        return time_step(x.step)

    for e in live:
        e.sink = e.times
    _rounds(live, steps, warmup, run_one, extra=slots)
    if host:     # (wall, cpu) pairs
        for e in live:
            e.times, e.cpu = [w for w, _ in e.times], [c for _, c in e.times]
    if device.type == "cuda" and not host:
        for e in live:
            if e.status == "ok":
                try:
                    _, e.launches = profile_step(e.step, device, memory=False)
                except Exception as exc:
                    e.fail(exc)
    for e in live:
        e.opt = e.step = None
    del params
    gc.collect()
    if not host:
        _host_overhead(live, optimizer=optimizer, n_tensors=len(shapes), groups=groups,
                       dtype=dtype, clip=clip, amp=amp, steps=steps, warmup=warmup,
                       device=device)
    return entries, {s.reference: s.sink for s in slots}


def _host_overhead(entries, *, optimizer, n_tensors, groups, dtype, clip, amp, steps, warmup,
                   device):
    """Note [host overhead]: the host time of a step on a twin parameter set with the same tensor
    count, groups and options but one element per tensor: the per-step cost that does not scale
    with the bytes (Python, dispatch, launches, per-tensor and per-group work)."""
    live = [e for e in entries if e.status == "ok"]
    twins = [Entry(e.impl) for e in live]
    lr = _impls.hyper(optimizer)["lr"]
    params = make_params([(1,)] * n_tensors, dtype, device, grad_scale=2.0 ** 16 if amp else 1.0)
    _build(twins, optimizer, param_groups(params, groups, lr), params, clip=clip, amp=amp,
           device=device, profile_first=False)
    timer = Timer(device)
    for t in twins:
        t.sink = t.host
    _rounds(twins, steps, warmup, lambda t: timer.host_us(t.step))
    for e, t in zip(live, twins):
        e.host = t.host
        t.opt = t.step = None
