"""The 2- or inf-norm of every grad of a bucket, in one launch, with no host sync.

Note [norm in one launch]: a fixed number of programs (at most MAX_PROGRAMS) walk the bucket's
(tensor, block) pairs with a grid-stride loop, each keeping one partial; the last program to
finish (acq_rel counter, as in Note [step in one launch]) reduces the partials in program order,
so the result is deterministic for a given bucket. 1024 programs of 4 warps are ~7.8 per SM on
132 SMs, one resident wave (an SM holds 16 such programs), and the final reduction reads 4 KiB.
NaN propagates like torch.linalg.vector_norm: the inf-norm's max keeps NaN. The table layout ``L``
and MAX_PROGRAMS come from fusedopt/backends/triton.py as constexprs.
"""
import triton
import triton.language as tl

from fusedopt.kernels.numerics import sqrt_rn
from fusedopt.kernels.preamble import aligned16, locate, typed


# num_blocks is a size: specialising on it (== 1, multiple of 16) would recompile per bucket.
@triton.jit(do_not_specialize=["blocks", "meta", "grads", "partials", "counter", "out",
                               "num_blocks"])
def norm_kernel(blocks, meta, grads, partials, counter, out, num_blocks,
                L: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr, INF: tl.constexpr,
                BLOCK: tl.constexpr, MAX_PROGRAMS: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    acc = tl.zeros([BLOCK], ACC)
    # a while loop, not range() over tensors: Triton 3.6's interpreter turns range() bounds into
    # Python ints through a conversion numpy >= 2.5 refuses for its 1-element arrays
    i = pid
    while i < num_blocks:
        t, b = locate(blocks, i)
        g_address = tl.load(grads + t)
        if g_address != L.no_grad:          # grad None: contributes nothing
            n = tl.load(meta + t * L.meta_cols + L.numel)
            offs = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            if b.to(tl.int64) * BLOCK + BLOCK <= n:  # unmasked full block: vector loads
                if aligned16(g_address, 0, 0, 0, 0):     # Note [alignment per tensor]
                    x = tl.load(typed(g_address, DTYPE, True) + offs).to(ACC)
                else:
                    x = tl.load(typed(g_address, DTYPE, False) + offs).to(ACC)
            else:
                x = tl.load(typed(g_address, DTYPE, False) + offs, mask=offs < n,
                            other=0).to(ACC)
            if INF:
                acc = tl.maximum(acc, tl.abs(x), propagate_nan=tl.PropagateNan.ALL)
            else:
                acc = acc + x * x
        i += programs
    tl.store(partials + pid, _reduce(acc, INF))
    tl.debug_barrier()      # the partial is stored before it is counted (Note [step in one launch])
    if tl.atomic_add(counter, 1) == programs - 1:
        idx = tl.arange(0, MAX_PROGRAMS)
        total = _reduce(tl.load(partials + idx, mask=idx < programs, other=0), INF)
        if not INF:
            total = sqrt_rn(total)
        tl.store(out, total.to(out.dtype.element_ty))   # float64 for fp64 grads, else float32
        tl.store(counter, 0)


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _reduce(x, INF: tl.constexpr):
    if INF:                         # Note [one return]
        out = tl.reduce(x, 0, _max_keep_nan)
    else:
        out = tl.sum(x, 0)
    return out
