"""Adam (L2 decay) and AdamW (decoupled decay) over every tensor of a bucket in one launch.

The math is torch.optim.adam._single_tensor_adam's, operation by operation, in the compute dtype
(Note [compute precision]); scalars derived from the hyper-parameters are formed in fp64 and then
rounded to the compute dtype, as torch does when a Python float meets a tensor. MASTER: the update
starts from and writes the fp32 master copy; the param only receives its rounding, unread
(Note [master copy] in fusedopt/optimizer.py).
"""
import triton
import triton.language as tl

from fusedopt import _hparams
from fusedopt.kernels.table import (GROUP, MASTER, META_COLS, NO_GRAD, NUMEL, PARAM, STATES,
                                    STEP, aligned16, block_done, div_rn, load_grad, locate,
                                    rounded, skipped, sqrt_rn, typed)

_LR = tl.constexpr(_hparams.LR)
_WD = tl.constexpr(_hparams.WEIGHT_DECAY)
_BETA1 = tl.constexpr(_hparams.BETA1)
_BETA2 = tl.constexpr(_hparams.BETA2)
_EPS = tl.constexpr(_hparams.EPS)
_COLS = tl.constexpr(_hparams.NUM_COLS)
_META_COLS, _NO_GRAD = tl.constexpr(META_COLS), tl.constexpr(NO_GRAD)
_NUMEL, _GROUP, _PARAM = tl.constexpr(NUMEL), tl.constexpr(GROUP), tl.constexpr(PARAM)
_STEP, _STATES, _MASTER = tl.constexpr(STEP), tl.constexpr(STATES), tl.constexpr(MASTER)


# Every non-constexpr argument is a pointer whose alignment Triton would otherwise fold into the
# cache key; they are read as scalars, so specialising on them buys nothing.
@triton.jit(do_not_specialize=["blocks", "meta", "grads", "counters", "hp", "inv_scale",
                               "clip_coef", "found_inf"])
def adam_kernel(blocks, meta, grads, counters, hp, inv_scale, clip_coef, found_inf,
                DTYPE: tl.constexpr, CT: tl.constexpr, AMSGRAD: tl.constexpr,
                MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr, MASTER: tl.constexpr,
                BLOCK: tl.constexpr):
    if skipped(found_inf):
        return
    t, b = locate(blocks, tl.program_id(0))
    g_address = tl.load(grads + t)
    if g_address == _NO_GRAD:       # grad is None: no state change, no step (as torch)
        return
    row = meta + t * _META_COLS
    n = tl.load(row + _NUMEL)
    hrow = hp + tl.load(row + _GROUP) * _COLS
    lr, wd = tl.load(hrow + _LR), tl.load(hrow + _WD)
    beta1, beta2, eps = tl.load(hrow + _BETA1), tl.load(hrow + _BETA2), tl.load(hrow + _EPS)
    step_ptr = tl.load(row + _STEP).to(tl.pointer_type(tl.float32))
    step = tl.load(step_ptr) + 1.0  # float32 like torch's state['step']
    # beta ** step in fp64 as exp(step * log(beta)): the interpreter has no libdevice.pow; the
    # relative error is ~|step * log(beta)| ulps, < 1e-13 for beta2 = 0.999 up to 1e5 steps.
    step64 = step.to(tl.float64)
    step_size = lr / (1.0 - tl.exp(step64 * tl.log(beta1)))
    bias_correction2_sqrt = sqrt_rn(1.0 - tl.exp(step64 * tl.log(beta2)))

    p_address, m_address = tl.load(row + _PARAM), tl.load(row + _STATES)
    v_address, vmax_address = tl.load(row + _STATES + 1), tl.load(row + _STATES + 2)
    master_address = tl.load(row + _MASTER)         # 0 without a master copy
    offs = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    # Full blocks run unmasked: a mask built from a numel read from memory has unknown
    # divisibility, which would forbid the 16-byte vector accesses (Note [alignment per tensor]).
    if b.to(tl.int64) * BLOCK + BLOCK <= n:
        # a | b is a multiple of 16 iff both are: one argument covers vmax and the master
        if aligned16(g_address, p_address, m_address, v_address, vmax_address | master_address):
            _adam_block(typed(p_address, DTYPE, True), typed(g_address, DTYPE, True),
                        typed(m_address, DTYPE, True), typed(v_address, DTYPE, True),
                        typed(vmax_address, DTYPE, True), typed(master_address, tl.float32, True),
                        offs, None, inv_scale, clip_coef,
                        lr, wd, beta1, beta2, eps, step_size, bias_correction2_sqrt,
                        DTYPE, CT, AMSGRAD, MAXIMIZE, DECOUPLED, MASTER)
        else:
            _adam_block(typed(p_address, DTYPE, False), typed(g_address, DTYPE, False),
                        typed(m_address, DTYPE, False), typed(v_address, DTYPE, False),
                        typed(vmax_address, DTYPE, False),
                        typed(master_address, tl.float32, False), offs, None, inv_scale,
                        clip_coef, lr, wd, beta1, beta2, eps, step_size, bias_correction2_sqrt,
                        DTYPE, CT, AMSGRAD, MAXIMIZE, DECOUPLED, MASTER)
    else:
        _adam_block(typed(p_address, DTYPE, False), typed(g_address, DTYPE, False),
                    typed(m_address, DTYPE, False), typed(v_address, DTYPE, False),
                    typed(vmax_address, DTYPE, False), typed(master_address, tl.float32, False),
                    offs, offs < n, inv_scale, clip_coef,
                    lr, wd, beta1, beta2, eps, step_size, bias_correction2_sqrt,
                    DTYPE, CT, AMSGRAD, MAXIMIZE, DECOUPLED, MASTER)
    block_done(counters, t, n, step_ptr, step, BLOCK)


@triton.jit
def _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, offs, mask, inv_scale,
                clip_coef, lr, wd, beta1, beta2, eps, step_size, bias_correction2_sqrt,
                DTYPE: tl.constexpr, CT: tl.constexpr, AMSGRAD: tl.constexpr,
                MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr, MASTER: tl.constexpr):
    g = load_grad(g_ptr, offs, mask, inv_scale, clip_coef, MAXIMIZE, CT)
    if MASTER:
        p = tl.load(master_ptr + offs, mask=mask)
    else:
        p = tl.load(p_ptr + offs, mask=mask).to(CT)
    if wd != 0:
        if DECOUPLED:
            p = p * (1.0 - lr * wd).to(CT)
        else:
            g = g + wd.to(CT) * p
    # exp_avg.lerp_(g, 1 - beta1), with torch's two-sided lerp formula (exact at both ends)
    m = tl.load(m_ptr + offs, mask=mask).to(CT)
    w = (1.0 - beta1).to(CT)
    m = tl.where(w < 0.5, m + w * (g - m), g - (g - m) * (1.0 - w))
    v = tl.load(v_ptr + offs, mask=mask).to(CT)
    v = v * beta2.to(CT) + (1.0 - beta2).to(CT) * g * g
    if AMSGRAD:
        vmax = tl.load(vmax_ptr + offs, mask=mask).to(CT)
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)   # torch.maximum keeps NaN
        tl.store(vmax_ptr + offs, rounded(vmax, DTYPE), mask=mask)
        denom = div_rn(sqrt_rn(vmax), bias_correction2_sqrt.to(CT)) + eps.to(CT)
    else:
        denom = div_rn(sqrt_rn(v), bias_correction2_sqrt.to(CT)) + eps.to(CT)
    p = p + (-step_size).to(CT) * div_rn(m, denom)
    if MASTER:
        tl.store(master_ptr + offs, p, mask=mask)
    tl.store(p_ptr + offs, rounded(p, DTYPE), mask=mask)
    tl.store(m_ptr + offs, rounded(m, DTYPE), mask=mask)
    tl.store(v_ptr + offs, rounded(v, DTYPE), mask=mask)
