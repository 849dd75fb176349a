"""The Triton backend: the kernels of kernels/ (``fusedopt.kernels``), one launch per bucket.

Runs on CUDA tensors; under ``TRITON_INTERPRET=1`` (set before triton is first imported) it runs
the same kernels through Triton's interpreter on CPU tensors instead, which is how CI tests it
without a GPU. The interpreter cannot reach CUDA memory through the pointer table, so then only
CPU tensors are supported. ``auto`` never picks this backend for CPU tensors.

Note [import never fails]: importing this module never raises; a missing or broken triton only
makes ``unavailable_reason()`` say why.
"""
import torch

from fusedopt import _engine
from fusedopt.backends import combine_norms, reference

try:
    import triton

    from fusedopt.kernels import adam_kernel, norm_kernel, sgd_kernel
    from fusedopt.kernels import norm as norm_launch
    from fusedopt.kernels import table
    _IMPORT_ERROR = None
    _INTERPRETED = not isinstance(adam_kernel, triton.runtime.jit.JITFunction)
except Exception as exc:  # Note [import never fails]
    _IMPORT_ERROR = exc
    _INTERPRETED = False

NAME = "triton"


def unavailable_reason():
    if _IMPORT_ERROR is not None:
        return f"triton could not be imported ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})"
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


def _same_layout(a, b):
    """Same dtype too: what an algorithm state must share with its param (a master copy, fp32,
    needs only the order)."""
    return a.dtype == b.dtype and _same_order(a, b)


class _Handle:
    """A bucket's device tables (Note [one launch per bucket]), built once by make_bucket.

    The kernels walk a param, its grad and its states as flat arrays, which needs the param dense
    and every state laid out like it (torch's zeros_like keeps the layout; a state_dict loaded from
    another layout may not). Params failing that, rare, step through the reference backend in the
    same call (which reads found_inf on the host: a sync), and their grads still count in the
    bucket's norm. Table order: walkable params,
    then the other params, then ``spec.pending`` (norm only, no state yet).
    """

    def __init__(self, spec):
        self.spec, self.dtype, self.device = spec, spec.dtype, spec.device
        # Note [master copy] (fusedopt/optimizer.py): the last state list, fp32, own meta column
        self.master = spec.has_master
        self.states = spec.states[:-1] if self.master else spec.states
        walk = [i for i, p in enumerate(spec.params)
                if _dense(p) and all(_same_layout(s[i], p) for s in self.states)
                and (not self.master or _same_order(spec.states[-1][i], p))]
        rest = sorted(set(range(len(spec.params))) - set(walk))
        self.fallback = None
        if rest:
            self.fallback = type(spec)(
                spec.device, spec.dtype, spec.flags, params=[spec.params[i] for i in rest],
                states=[[s[i] for i in rest] for s in spec.states],
                steps=[spec.steps[i] for i in rest],
                group_index=[spec.group_index[i] for i in rest],
                grads=None if spec.grads is None else [spec.grads[i] for i in rest])
        self.tensors = [spec.params[i] for i in walk + rest] + list(spec.pending)
        # explicit grads (fusedopt._ops), in table order; None: each tensor's .grad at each step
        self.explicit = (None if spec.grads is None else
                         [spec.grads[i] for i in walk + rest] + [p.grad for p in spec.pending])
        self.num_walk = len(walk)
        # (is contiguous, strides) a walked tensor's grad must have, None for norm-only ones
        self.layout = [(p.is_contiguous(), p.stride()) if i < len(walk) else None
                       for i, p in enumerate(self.tensors)]
        self.block = table.block_size(self.dtype)
        numels = [p.numel() for p in self.tensors]
        self.walk, self.rest = walk, rest
        # the tensors whose addresses the meta rows hold: checked every step (refresh)
        self.watched = [spec.params[i] for i in walk] + [s[i] for s in spec.states for i in walk]
        self.meta = None
        self.blocks, self.num_blocks = table.block_pairs(numels, self.block, self.device)
        self.update_blocks = sum(max(1, -(-n // self.block)) for n in numels[:len(walk)])
        self.counters = torch.zeros(max(1, len(self.tensors)), dtype=torch.int32,
                                    device=self.device)
        self.grads = torch.zeros(max(1, len(self.tensors)), dtype=torch.int64,
                                 device=self.device)
        self.addresses, self.watched_addresses, self.copies = None, None, []
        self.dtypes = (table.triton_dtype(self.dtype), table.compute_dtype(self.dtype))
        self.partials = torch.empty(norm_launch.MAX_PROGRAMS, device=self.device,
                                    dtype=torch.float64 if self.dtype == torch.float64
                                    else torch.float32)
        self.norm_counter = torch.zeros(1, dtype=torch.int32, device=self.device)

    def _upload_meta(self):
        """The meta rows, with the params' and states' addresses as they are now."""
        spec = self.spec
        rows = [table.meta_row(spec.params[i].numel(), spec.group_index[i], spec.params[i],
                               spec.steps[i], [s[i] for s in self.states],
                               spec.states[-1][i] if self.master else None)
                for i in self.walk]
        rows += [table.meta_row(spec.params[i].numel(), spec.group_index[i]) for i in self.rest]
        rows += [table.meta_row(p.numel(), g) for p, g in zip(spec.pending, spec.pending_group)]
        meta = table.upload(rows or [table.meta_row(0, 0)], torch.int64, self.device)
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
                addresses.append(table.NO_GRAD)
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
            host = addresses or [table.NO_GRAD]
            self.grads.copy_(table.upload(host, torch.int64, self.device), non_blocking=True)
            self.addresses = addresses


def make_bucket(spec):
    return _Handle(spec)


def pending_with_grad(handle):
    return [i for i, p in enumerate(handle.spec.pending) if p.grad is not None]


def adam_step(handle, hp, *, amsgrad, maximize, decoupled, clip_coef=None, inv_scale=None,
              found_inf=None):
    handle.refresh_grads()
    if handle.num_walk:
        dtype, compute = handle.dtypes
        adam_kernel[(handle.update_blocks,)](
            handle.blocks, handle.meta, handle.grads, handle.counters, hp, inv_scale, clip_coef,
            found_inf, DTYPE=dtype, CT=compute, AMSGRAD=amsgrad, MAXIMIZE=maximize,
            DECOUPLED=decoupled, MASTER=handle.master, BLOCK=handle.block,
            num_warps=table.NUM_WARPS, enable_fp_fusion=table.FP_FUSION)
    if handle.fallback is not None:
        reference.adam_step(handle.fallback, hp, amsgrad=amsgrad, maximize=maximize,
                            decoupled=decoupled, clip_coef=clip_coef, inv_scale=inv_scale,
                            found_inf=found_inf)


def sgd_step(handle, hp, *, nesterov, maximize, clip_coef=None, inv_scale=None, found_inf=None):
    handle.refresh_grads()
    if handle.num_walk:
        dtype, compute = handle.dtypes
        sgd_kernel[(handle.update_blocks,)](
            handle.blocks, handle.meta, handle.grads, handle.counters, hp, inv_scale, clip_coef,
            found_inf, DTYPE=dtype, CT=compute, HAS_BUFFER=len(handle.states) == 1,
            NESTEROV=nesterov, MAXIMIZE=maximize, MASTER=handle.master, BLOCK=handle.block,
            num_warps=table.NUM_WARPS, enable_fp_fusion=table.FP_FUSION)
    if handle.fallback is not None:
        reference.sgd_step(handle.fallback, hp, nesterov=nesterov, maximize=maximize,
                           clip_coef=clip_coef, inv_scale=inv_scale, found_inf=found_inf)


def _launch_norm(blocks, meta, grads, num_blocks, dtype, norm_type, partials, counter):
    out = torch.empty((), dtype=torch.float32, device=grads.device)
    norm_kernel[(norm_launch.num_programs(num_blocks),)](
        blocks, meta, grads, partials, counter, out, num_blocks,
        DTYPE=table.triton_dtype(dtype), ACC=table.compute_dtype(dtype),
        INF=norm_type == float("inf"), BLOCK=table.block_size(dtype),
        MAX_PROGRAMS=norm_launch.MAX_PROGRAMS, num_warps=table.NUM_WARPS,
        enable_fp_fusion=table.FP_FUSION)
    return out


def bucket_norm(handle, norm_type):
    handle.refresh_grads()
    if not handle.tensors:
        return torch.zeros((), dtype=torch.float32, device=handle.device)
    return _launch_norm(handle.blocks, handle.meta, handle.grads, handle.num_blocks,
                        handle.dtype, norm_type, handle.partials,
                        handle.norm_counter)


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
        blocks, num_blocks = table.block_pairs(numels, table.block_size(dtype), device)
        meta = table.upload([table.meta_row(n, 0) for n in numels], torch.int64, device)
        addresses = [t.data_ptr() for t in ts]
        grads = table.upload(addresses, torch.int64, device)
        partials = torch.empty(norm_launch.MAX_PROGRAMS, device=device,
                               dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        norms.append(_launch_norm(blocks, meta, grads, num_blocks, dtype, norm_type, partials,
                                  torch.zeros(1, dtype=torch.int32, device=device)))
    return combine_norms(norms, norm_type)


def tensors_scale_(tensors, coef):
    torch._foreach_mul_(list(tensors), coef)
