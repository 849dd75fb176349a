"""The Triton backend: the kernels of kernels/ (``fusedopt.kernels``), one launch per bucket (two
for a two-stage algorithm), and their host half: the tables the kernels walk, the launch-size
rule and the algorithm table.

Runs on CUDA tensors; under ``TRITON_INTERPRET=1`` (set before triton is first imported) it runs
the same kernels through Triton's interpreter on CPU tensors instead, which is how CI tests it
without a GPU. The interpreter cannot reach CUDA memory through the pointer table, so then only
CPU tensors are supported. ``auto`` never picks this backend for CPU tensors.

Note [import never fails]: importing this module never raises; a missing or broken triton only
makes ``unavailable_reason()`` say why.
"""
import collections
import importlib

import torch

from fusedopt import _engine, _hparams
from fusedopt.backends import combine_norms, reference

# The algorithm table: the descriptors (fusedopt.algorithms) whose block math kernels/ holds, each
# in the module of its name (kernels/preamble.py says what one holds). Adding an algorithm: its
# module in kernels/ and its name here.
KERNEL_NAMES = ("adam", "sgd", "lion", "lars", "lamb")
KERNELS = {}

# Note [import never fails]: what failed to import, and why. Two steps, so that a broken
# fusedopt.kernels (a GPU run once skipped 57 tests as "triton could not be imported" when the
# install lacked kernels/) is not reported as a missing triton.
_IMPORT_ERROR, _INTERPRETED = None, False
try:
    import triton
    import triton.language as tl
except Exception as exc:  # noqa: BLE001
    _IMPORT_ERROR = ("triton could not be imported", exc)
else:
    try:
        from fusedopt import kernels
        KERNELS = {name: importlib.import_module(f"fusedopt.kernels.{name}")
                   for name in KERNEL_NAMES}
        _INTERPRETED = not isinstance(kernels.update_kernel, triton.runtime.jit.JITFunction)
    except Exception as exc:  # noqa: BLE001
        _IMPORT_ERROR = ("triton imports, but fusedopt's Triton kernels (fusedopt.kernels, "
                         "kernels/ in the source tree) do not", exc)

NAME = "triton"

# ---- the tables the kernels walk (Note [one launch per bucket], kernels/preamble.py) -----------
# Meta row columns, passed to the kernels as the constexpr ``L``: numel, group row, the addresses
# of the param, its float32 step counter, up to three states (Adam's m, v, max_v) and the weights
# mode's tensor (fp32 master or compensation: Note [precision modes], docs/internals.md), then
# its rounding seed (Note [stochastic rounding]; 0 without). no_grad is -1, not 0: torch gives
# 0-element tensors the address 0, and their step must still count.
Layout = collections.namedtuple(
    "Layout", "meta_cols numel group param step states extra seed no_grad hp_cols")
LAYOUT = Layout(meta_cols=9, numel=0, group=1, param=2, step=3, states=4, extra=7, seed=8,
                no_grad=-1, hp_cols=_hparams.NUM_COLS)

# Launch-size rule (not autotuned: autotuning would re-run an in-place update while timing it and
# would change BLOCK, hence the block table, per device). One program moves BLOCK elements of
# every stream: 1024 fp32 elements over 4 warps = 8 per thread = two 16-byte loads per stream and
# thread (PTX of an sm_90 build: ld.global.v4.b32 on full blocks). Measured on an H200
# (bench/triton_blocks.py, fp32 AdamW, 500M params in 100 tensors, Triton 3.6, 2026-11-27):
#   BLOCK 1024, 4 warps: 4.84 ms, 128 registers, 4 programs/SM   <- the rule
#   BLOCK 2048, 4 warps: 6.00 ms, 242 registers, 2 programs/SM   (the rule before)
#   BLOCK 2048, 8 warps: 5.41 ms, 128 registers, 2 programs/SM
#   BLOCK 4096, 4 warps: 4.85 ms, 255 registers + 104 B spilled
# Registers grow with elements per thread, and 2 programs of 4 warps per SM left too few loads in
# flight. fp64 halves BLOCK to keep the bytes and registers per thread; fp16/bf16 keep 1024 and
# compute in fp32 registers. The last block of a tensor idles < BLOCK lanes (masked lanes move no
# bytes): for ResNet-50's 161 tensors, 25.6 M elements, at most 161 x 1023 = 0.6% of the lanes.
NUM_WARPS = 4
# Contract a*b+c into FMAs, as nvcc does by default (--fmad=true) for the cuda backend and torch's
# CUDA kernels. Pinned: Triton 3.10 turns its default off (and 3.9 warns when it is unset).
FP_FUSION = True
NORM_PROGRAMS = 1024          # Note [norm in one launch], kernels/norm.py


def block_size(dtype):
    return 512 if dtype == torch.float64 else 1024


def triton_dtype(dtype):
    return {torch.float32: tl.float32, torch.float64: tl.float64,
            torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def compute_dtype(dtype):
    """Note [compute precision]: fp64 params compute in fp64, every other dtype in fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_pairs(numels, block, device):
    """The (tensor, block) pairs, tensor by tensor: ceil(n / block) per tensor, and one for an
    empty tensor, whose step counter still advances (torch counts a step of a param with a
    0-element grad). Built with tensor ops: a 1 B-parameter bucket has ~490 K pairs."""
    counts = torch.tensor([max(1, -(-n // block)) for n in numels] or [1], dtype=torch.int64)
    tensor = torch.repeat_interleave(torch.arange(len(counts)), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    pairs = torch.stack([tensor, torch.arange(len(tensor)) - first], 1).to(torch.int32)
    return upload(pairs, torch.int32, device), len(pairs) if numels else 0


def meta_row(numel, group, param=None, step=None, states=(), extra=None, seed=0):
    """One host row of ``meta``; a norm-only tensor leaves the addresses at 0."""
    row = [0] * LAYOUT.meta_cols
    row[LAYOUT.numel], row[LAYOUT.group], row[LAYOUT.seed] = numel, group, seed
    if param is not None:
        row[LAYOUT.param], row[LAYOUT.step] = param.data_ptr(), step.data_ptr()
    for k, state in enumerate(states):
        row[LAYOUT.states + k] = state.data_ptr()
    if extra is not None:
        row[LAYOUT.extra] = extra.data_ptr()
    return row


def upload(values, dtype, device):
    """A non-empty host list or tensor on ``device`` without a host sync (through pinned
    memory: fusedopt._engine.upload)."""
    host = values.contiguous() if torch.is_tensor(values) else torch.tensor(values, dtype=dtype)
    return host if device.type == "cpu" else _engine.upload(host, device)


def unavailable_reason():
    if _IMPORT_ERROR is not None:
        what, exc = _IMPORT_ERROR
        return f"{what} ({type(exc).__name__}: {exc})"
    if _INTERPRETED or torch.cuda.is_available():
        return None
    return "no CUDA device (on CPU tensors it needs TRITON_INTERPRET=1 before triton is imported)"


def supports(device):
    return unavailable_reason() is None and device.type == ("cpu" if _INTERPRETED else "cuda")


def _dense(t):
    """Non-overlapping and dense: its elements fill [data_ptr, data_ptr + numel) in some order."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_order(a, b):
    """Same shape and element order in memory: one linear walk serves both."""
    return a.shape == b.shape and (a.stride() == b.stride()
                                   or (a.is_contiguous() and b.is_contiguous()))


# Note [precision modes] (docs/internals.md): the state dtypes each param dtype allows
STATE_DTYPES = {torch.float64: (torch.float64,),
                torch.float32: (torch.float32, torch.bfloat16),
                torch.float16: (torch.float16, torch.float32, torch.bfloat16),
                torch.bfloat16: (torch.bfloat16, torch.float32)}
WEIGHTS_MODES = {_engine.PLAIN: "plain", _engine.MASTER: "master", _engine.KAHAN: "kahan"}


def check_bucket(spec, algo=None, flags=0):
    """The one validator of this backend: at construction (``algo`` None) the bucket's param
    dtype, weights mode, state dtype and seeds are a combination Note [precision modes] allows;
    before its first step with ``algo`` and ``flags``, also that its state lists are the
    algorithm's (then the weights mode's). The kernels assume what it checked; each error names
    the BucketSpec field and what it expects."""
    if spec.weights not in WEIGHTS_MODES:
        raise ValueError(f"weights: expected 0 (plain), 1 (master) or 2 (kahan), got "
                         f"{spec.weights!r}")
    mode = f"weights={spec.weights} ({WEIGHTS_MODES[spec.weights]})"
    extra = {_engine.PLAIN: [], _engine.MASTER: ["the fp32 master copies"],
             _engine.KAHAN: ["the compensations"]}[spec.weights]
    if not spec.params:           # pending params only (no state yet): nothing to step
        return
    if algo is not None:
        names = list(algo.state_names(flags)) + extra
        if len(spec.states) != len(names):
            raise ValueError(f"states: expected {len(names)} state lists for {algo.name} with "
                             f"{mode} ({', '.join(names) or 'none'}), got {len(spec.states)}")
    if spec.has_extra and not spec.states:
        raise ValueError(f"states: expected a last list of {extra[0]} ({mode}), got no lists")
    num_algo_states = len(spec.states) - len(extra)
    for k, states in enumerate(spec.states):
        if len(states) != len(spec.params):
            raise ValueError(f"states[{k}]: expected one tensor per param ({len(spec.params)}), "
                             f"got {len(states)}")
    if spec.has_extra:
        if spec.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"{mode}: expected float16 or bfloat16 params, got {spec.dtype}")
        want = torch.float32 if spec.has_master else spec.dtype
        for i, t in enumerate(spec.states[-1]):
            if t.dtype != want:
                raise TypeError(f"states[{num_algo_states}][{i}] ({extra[0]} of {mode}): "
                                f"expected {want}, got {t.dtype}")
    state_dtypes = {}
    for k in range(num_algo_states):
        for i, t in enumerate(spec.states[k]):
            state_dtypes.setdefault(t.dtype, f"states[{k}][{i}]")
    if len(state_dtypes) > 1:
        found = ", ".join(f"{dtype} ({where})" for dtype, where in state_dtypes.items())
        raise TypeError(f"states: expected one dtype for all of the algorithm's states, got "
                        f"{found}")
    for dtype, where in state_dtypes.items():
        if dtype not in STATE_DTYPES[spec.dtype]:
            raise TypeError(f"{where}: expected a state dtype of "
                            f"{' or '.join(map(str, STATE_DTYPES[spec.dtype]))} beside "
                            f"{spec.dtype} params, got {dtype}")
    if spec.seeds:
        if len(spec.seeds) != len(spec.params):
            raise ValueError(f"seeds: expected one per param ({len(spec.params)}) or none, got "
                             f"{len(spec.seeds)}")
        for i, seed in enumerate(spec.seeds):
            if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2 ** 32):
                raise ValueError(f"seeds[{i}]: expected an integer in [0, 2^32), got {seed!r}")
        for dtype, where in state_dtypes.items():
            if dtype != torch.bfloat16:
                raise TypeError(f"seeds: stochastic rounding writes bfloat16 states; expected "
                                f"bfloat16 states, got {dtype} ({where})")


class _Handle:
    """A bucket's device tables (Note [one launch per bucket]), built once by make_bucket.

    The kernels walk a param, its grad and its states as flat arrays, which needs the param dense
    and every state laid out like it (torch's zeros_like keeps the layout; a state_dict loaded from
    another layout may not). Params failing that, rare, step through the reference backend in the
    same call (which reads found_inf on the host: a sync), and their grads still count in the
    bucket's norm. Table order: walkable params,
    then the other params, then ``spec.pending`` (norm only, no state yet).

    Note [stochastic rounding] draws each element's bits by its row-major index, which the
    kernels take to be its offset: with seeds, a walkable param that is not contiguous steps
    through contiguous copies of itself and its states (``staged``: copied in before the launch,
    back after it).
    """

    def __init__(self, spec):
        check_bucket(spec)
        self.spec, self.dtype, self.device = spec, spec.dtype, spec.device
        self.checked = set()           # the (algorithm, flags) check_bucket passed at a step
        # the algorithm's states' dtype (check_bucket: one for all); with a weights mode, the last
        # list is that mode's (own meta column)
        states = spec.states[:-1] if spec.has_extra else spec.states
        state_dtype = states[0][0].dtype if states and states[0] else self.dtype
        walk = [i for i, p in enumerate(spec.params)
                if _dense(p) and all(_same_order(s[i], p) for s in spec.states)]
        rest = sorted(set(range(len(spec.params))) - set(walk))
        self.fallback = None
        if rest:
            self.fallback = type(spec)(
                spec.device, spec.dtype, spec.flags, params=[spec.params[i] for i in rest],
                states=[[s[i] for i in rest] for s in spec.states],
                steps=[spec.steps[i] for i in rest],
                group_index=[spec.group_index[i] for i in rest],
                grads=None if spec.grads is None else [spec.grads[i] for i in rest],
                weights=spec.weights, seeds=[spec.seeds[i] for i in rest if spec.seeds])
        # per walked param: (param, [states], weights-mode tensor or None) as the kernel walks
        # them, and the (original, contiguous copy) pairs of the staged ones
        self.walked, self.staged = {}, []
        for i in walk:
            tensors = [spec.params[i]] + [s[i] for s in spec.states]
            if spec.seeds and not spec.params[i].is_contiguous():
                copies = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
                self.staged += zip(tensors, copies)
                tensors = copies
            extra = tensors.pop() if spec.has_extra else None
            self.walked[i] = (tensors[0], tensors[1:], extra)
        self.tensors = [spec.params[i] for i in walk + rest] + list(spec.pending)
        # explicit grads (fusedopt._ops), in table order; None: each tensor's .grad at each step
        self.explicit = (None if spec.grads is None else
                         [spec.grads[i] for i in walk + rest] + [p.grad for p in spec.pending])
        self.num_walk = len(walk)
        # (is contiguous, strides) a walked tensor's grad must have, None for norm-only ones
        self.layout = ([(q.is_contiguous(), q.stride()) for q, _, _ in self.walked.values()]
                       + [None] * (len(self.tensors) - len(walk)))
        self.block = block_size(self.dtype)
        numels = [p.numel() for p in self.tensors]
        self.rest = rest
        # the tensors whose addresses the meta rows hold: checked every step (refresh)
        self.watched = [spec.params[i] for i in walk] + [s[i] for s in spec.states for i in walk]
        self.meta = None
        self.blocks, self.num_blocks = block_pairs(numels, self.block, self.device)
        self.update_blocks = sum(max(1, -(-n // self.block)) for n in numels[:len(walk)])
        self.counters = torch.zeros(max(1, len(self.tensors)), dtype=torch.int32,
                                    device=self.device)
        self.grads = torch.zeros(max(1, len(self.tensors)), dtype=torch.int64,
                                 device=self.device)
        self.addresses, self.watched_addresses, self.copies = None, None, []
        self.dtypes = (triton_dtype(self.dtype), triton_dtype(state_dtype),
                       compute_dtype(self.dtype))
        self.norm_partials = torch.empty(NORM_PROGRAMS, device=self.device,
                                         dtype=torch.float64 if self.dtype == torch.float64
                                         else torch.float32)
        self.sums = None            # a two-stage algorithm's (partials, totals): step allocates
        self.norm_counter = torch.zeros(1, dtype=torch.int32, device=self.device)

    def _upload_meta(self):
        """The meta rows, with the params' and states' addresses as they are now."""
        spec = self.spec
        rows = [meta_row(param.numel(), spec.group_index[i], param, spec.steps[i], states, extra,
                         spec.seeds[i] if spec.seeds else 0)
                for i, (param, states, extra) in self.walked.items()]
        rows += [meta_row(spec.params[i].numel(), spec.group_index[i]) for i in self.rest]
        rows += [meta_row(p.numel(), g) for p, g in zip(spec.pending, spec.pending_group)]
        meta = upload(rows or [meta_row(0, 0)], torch.int64, self.device)
        if self.meta is None:
            self.meta = meta
        else:   # in place: a captured CUDA graph keeps reading this address
            self.meta.copy_(meta, non_blocking=True)

    def refresh_grads(self):
        """Point the table at this step's grads (autograd may have made new ones), and at the
        params' and states' storage if it moved (``p.data = ...`` frees the old one: a table
        still pointing there would write into freed memory).

        Cost: O(tensors) Python, ~0.4 us per tensor on a 2-core CPU (1000 tensors: ~0.4 ms) plus
        ~0.07 us per param and state address read, with no host sync, so it overlaps the previous
        step's kernels; the device copies (one async H2D copy each) happen only when an address
        changed. A grad laid out unlike its param is copied into the param's layout first (one
        extra pass over that grad).
        """
        watched = [t.data_ptr() for t in self.watched]
        if watched != self.watched_addresses:
            self._upload_meta()
            self.watched_addresses = watched
        self.copies = []
        addresses = []
        for i, p in enumerate(self.tensors):
            g = p.grad if self.explicit is None else self.explicit[i]
            if g is None:
                addresses.append(LAYOUT.no_grad)
                continue
            if g.layout is not torch.strided:
                raise RuntimeError("sparse gradients are not supported")
            if g.dtype is not self.dtype or g.shape != p.shape:
                raise RuntimeError(f"grad of {_engine.describe_param(self.spec.groups, p)}: "
                                   f"shape {tuple(g.shape)}, dtype {g.dtype} does not match the "
                                   f"parameter's ({tuple(p.shape)}, {p.dtype})")
            want = self.layout[i]
            if want is None:                  # norm only: any dense order will do
                if not _dense(g):
                    g = g.contiguous()
                    self.copies.append(g)
            elif not (g.is_contiguous() if want[0] else g.stride() == want[1]):
                g = torch.empty_strided(p.shape, want[1], dtype=p.dtype,
                                        device=p.device).copy_(g)
                self.copies.append(g)         # alive until the next refresh, past the launch
            addresses.append(g.data_ptr())
        if addresses != self.addresses:
            host = addresses or [LAYOUT.no_grad]
            self.grads.copy_(upload(host, torch.int64, self.device), non_blocking=True)
            self.addresses = addresses


def make_bucket(spec):
    return _Handle(spec)


def pending_with_grad(handle):
    return [i for i, p in enumerate(handle.spec.pending) if p.grad is not None]


_plans = {}


def _plan(algo, flags):
    """(kernel module, Columns, Flags, stages) of ``algo`` with flags word ``flags``: the module's
    column and flag names resolved against the descriptor, once per (algorithm, flags)."""
    key = (algo.name, flags)
    if key not in _plans:
        if algo.name not in KERNELS:
            raise ValueError(f"the triton backend has no kernel for algorithm {algo.name!r} "
                             f"(it has {list(KERNEL_NAMES)})")
        module = KERNELS[algo.name]
        names, values = algo.column_names, algo.flag_dict(flags)
        columns = module.Columns(*(names.index(name) for name in module.Columns._fields))
        flag_values = module.Flags(*(values[name] for name in module.Flags._fields))
        stages = (1, 2) if hasattr(module, "sums") else (0,)
        _plans[key] = (module, columns, flag_values, stages)
    return _plans[key]


def step(handle, hp, algo, flags, *, clip_coef=None, inv_scale=None, found_inf=None):
    """One step of ``algo`` (a descriptor of fusedopt.algorithms) with flags word ``flags``: one
    launch of kernels/preamble.py's kernel with the algorithm's block math, two for a two-stage
    algorithm (Note [two stages]: per-tensor sums, then the step)."""
    module, columns, flag_values, stages = _plan(algo, flags)
    if (algo.name, flags) not in handle.checked:
        check_bucket(handle.spec, algo, flags)
        handle.checked.add((algo.name, flags))
    handle.refresh_grads()
    for original, copy in handle.staged:
        copy.copy_(original)
    if handle.num_walk:
        dtype, state_dtype, compute = handle.dtypes
        partials = totals = None
        if len(stages) == 2:
            if handle.sums is None:       # float64 [blocks, 2] and [tensors, 2]
                handle.sums = tuple(torch.empty(2 * count, dtype=torch.float64,
                                                device=handle.device)
                                    for count in (handle.update_blocks, handle.num_walk))
            partials, totals = handle.sums
        for stage in stages:
            kernels.update_kernel[(handle.update_blocks,)](
                handle.blocks, handle.meta, handle.grads, handle.counters, hp, partials, totals,
                inv_scale, clip_coef, found_inf, PREPARE=module.prepare, UPDATE=module.update,
                SUMS=getattr(module, "sums", None), C=columns, F=flag_values, L=LAYOUT,
                STAGE=stage, DTYPE=dtype, S=state_dtype, CT=compute, WEIGHTS=handle.spec.weights,
                SR=bool(handle.spec.seeds), BLOCK=handle.block, num_warps=NUM_WARPS,
                enable_fp_fusion=FP_FUSION)
    for original, copy in handle.staged:
        original.copy_(copy)
    if handle.fallback is not None:
        reference.step(handle.fallback, hp, algo, flags, clip_coef=clip_coef,
                       inv_scale=inv_scale, found_inf=found_inf)


def _launch_norm(blocks, meta, grads, num_blocks, dtype, norm_type, partials, counter,
                 out_dtype):
    """The norm as ``out_dtype``: float64 where a grad is fp64 (Note [norm dtype],
    fusedopt/backends/__init__.py), else float32."""
    out = torch.empty((), dtype=out_dtype, device=grads.device)
    kernels.norm_kernel[(max(1, min(num_blocks, NORM_PROGRAMS)),)](
        blocks, meta, grads, partials, counter, out, num_blocks, L=LAYOUT,
        DTYPE=triton_dtype(dtype), ACC=compute_dtype(dtype), INF=norm_type == float("inf"),
        BLOCK=block_size(dtype), MAX_PROGRAMS=NORM_PROGRAMS, num_warps=NUM_WARPS,
        enable_fp_fusion=FP_FUSION)
    return out


def bucket_norm(handle, norm_type):
    handle.refresh_grads()
    if not handle.tensors:
        return torch.zeros((), dtype=torch.float32, device=handle.device)
    fp64 = handle.dtype == torch.float64 and any(a != LAYOUT.no_grad for a in handle.addresses)
    return _launch_norm(handle.blocks, handle.meta, handle.grads, handle.num_blocks,
                        handle.dtype, norm_type, handle.norm_partials, handle.norm_counter,
                        torch.float64 if fp64 else torch.float32)


def tensors_norm(tensors, norm_type):
    """Arbitrary tensors (one device): a throw-away table per dtype, one launch per dtype."""
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t.detach() if _dense(t) else t.contiguous())
    if not by_dtype:
        return torch.zeros((), dtype=torch.float32)
    norms = []
    for dtype, ts in by_dtype.items():
        device = ts[0].device
        numels = [t.numel() for t in ts]
        blocks, num_blocks = block_pairs(numels, block_size(dtype), device)
        meta = upload([meta_row(n, 0) for n in numels], torch.int64, device)
        addresses = [t.data_ptr() for t in ts]
        grads = upload(addresses, torch.int64, device)
        partials = torch.empty(NORM_PROGRAMS, device=device,
                               dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        norms.append(_launch_norm(blocks, meta, grads, num_blocks, dtype, norm_type, partials,
                                  torch.zeros(1, dtype=torch.int32, device=device),
                                  partials.dtype))
    return combine_norms(norms, norm_type)


def tensors_scale_(tensors, coef):
    torch._foreach_mul_(list(tensors), coef)
