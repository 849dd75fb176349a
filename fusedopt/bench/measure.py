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

from fusedopt.bench import impls as _impls

# The stream, the reference of "vs stream": in-place a.add_(b, alpha=...) reads a and b and writes
# a: 12 B per fp32 element, with no write-allocate traffic owed (the definition issue 2 uses, on
# 20M floats on CPU). A reference access pattern, not a ceiling: a step may beat it.
STREAM_BYTES_PER_ELEM = 12
CPU_STREAM_NUMEL = 20_000_000
CUDA_STREAM_NUMEL = 1 << 28

_STEP_UNITS = {"adam": 7, "adamw": 7, "sgd": 5}   # element reads+writes of one update, per param


def bytes_per_param(optimizer, dtype, *, clip=False, amp=False, master=False):
    """Bytes one step must move per parameter (bench/README.md, "Effective bandwidth"): Adam/AdamW read
    p, g, m, v and write p, m, v (7 elements: fp32 28 B); SGD with momentum reads p, g, buf and
    writes p, buf (5: 20 B). A clip norm or AMP's found_inf check needs one more read of every grad
    before the update (fp32 AdamW + clip: 32 B), and both share that read. ``master``: fp16/bf16
    params with fp32 master copies read the master (4 B) instead of the param and write both
    (Note [master copy]): bf16 AdamW 14 -> 20 B."""
    size = torch.empty((), dtype=dtype).element_size()
    moved = (_STEP_UNITS[optimizer] + (1 if clip or amp else 0)) * size
    if master and dtype in (torch.float16, torch.bfloat16):
        moved += 4 + 4 - size
    return moved


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


class Stream:
    """The stream: ``a.add_(b, alpha=1e-7)`` over fp32 vectors, 12 B/element."""

    def __init__(self, device):
        numel = CPU_STREAM_NUMEL if device.type == "cpu" else CUDA_STREAM_NUMEL
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            while numel > (1 << 22) and 8 * numel > free // 4:
                numel //= 2
        self.numel = numel
        self.a = torch.ones(numel, device=device)
        self.b = torch.ones(numel, device=device)
        self.bytes = STREAM_BYTES_PER_ELEM * numel
        self.method = (f"in-place a.add_(b, alpha=...) on {numel} fp32 elements, "
                       f"{STREAM_BYTES_PER_ELEM} B/element")

    def __call__(self):
        self.a.add_(self.b, alpha=1e-7)


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
        self.times, self.host = [], []
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


def _rounds(entries, rounds, warmup, run_one, extra=None):
    """Interleaved rounds; ``run_one(entry) -> float`` appended to ``sink`` after warmup."""
    slots = [e for e in entries if e.status == "ok"] + ([extra] if extra is not None else [])
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


class _StreamSlot:
    def __init__(self, stream):
        self.stream, self.sink = stream, []


def run_point(impl_names, *, optimizer, shapes, groups, dtype, clip, amp, steps, warmup, device,
              stream):
    """Time every implementation on one parameter set. Returns (entries, stream times in ms)."""
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
           device=device, profile_first=True)
    timer = Timer(device)
    slot = _StreamSlot(stream)

    def run_one(x):
        if x is slot:
            return timer(stream)
        if restore is not None:
            restore()
        return timer(x.step)

    for e in live:
        e.sink = e.times
    _rounds(live, steps, warmup, run_one, extra=slot)
    if device.type == "cuda":
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
    _host_overhead(live, optimizer=optimizer, n_tensors=len(shapes), groups=groups, dtype=dtype,
                   clip=clip, amp=amp, steps=steps, warmup=warmup, device=device)
    return entries, slot.sink


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
